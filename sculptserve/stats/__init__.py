"""The statistics: priors, MMD, LPS and the other independence scores, supervised
disentanglement metrics, drift-window statistics. Pure functions on embeddings (numpy, or torch
tensors through the array API for MMD); nothing here imports the serving side.
"""
