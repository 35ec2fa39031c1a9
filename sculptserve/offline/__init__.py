"""Offline work on trained models and bundles: ``sculpt eval`` (:mod:`.evaluation`, its
sources in :mod:`.sources`) and batched embedding of datasets (:mod:`.embedding`)."""
