"""tagger.rules"""
