"""The bundle, the contract between ``sculpt export`` and serving: its manifest schema
(:mod:`.schema`) and loading + verification (:mod:`.load`)."""
