"""inductionlab: train small transformers and watch induction heads form."""

from .config import Config, ConfigError
from .configfile import load_config
from . import tasks  # noqa: F401 - registers the built-in tasks (registry.TASKS)
from .models import Transformer, build_model

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "Transformer", "build_model", "__version__"]
