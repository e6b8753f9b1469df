"""Sequential recommenders: data, models, training, evaluation and the model artifact.

Serving code imports only ``training.artifact`` (``load_recommender``) and
``training.registry``; everything else is for training runs.
"""
