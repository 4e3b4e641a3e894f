"""MLflow, and only here: ``client`` is the one module that imports mlflow; ``stages`` says what each stage logs.
The core runs without either."""
