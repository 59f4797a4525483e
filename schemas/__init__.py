"""tagger.schemas"""
