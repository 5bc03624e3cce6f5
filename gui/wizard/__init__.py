"""The training wizard (one module per page)."""

from gui.wizard.training_wizard import TrainingWizard

__all__ = ["TrainingWizard"]
