"""Training side (torch): datasets, models, objectives, trainer."""
