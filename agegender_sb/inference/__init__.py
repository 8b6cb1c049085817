"""The classifier (SpeechBrain's ``EncoderClassifier`` contract), file analysis and the result
types.
"""
