"""tagger.streams"""
