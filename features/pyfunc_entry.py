"""MLflow "models from code" entry point of the lead-scorer bundle.

MLflow runs this file when it loads the model, so the bundle is rebuilt from code and
plain files (booster text, JSON), never unpickled. Not imported by the project itself.
"""

from mlflow.models import set_model

from features.bundle import LeadScorerModel

set_model(LeadScorerModel())
