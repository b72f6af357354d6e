"""The search stage: a Ray Tune search (``tune``) and its trials (``trial``), each trial an MLflow child run."""
