-- A second database on the same server for the Optuna studies (MLflow uses `mlflow`).
CREATE DATABASE optuna;
