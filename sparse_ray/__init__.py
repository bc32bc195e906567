"""sparse-ray: distributed SPLADE / inference-free SPLADE training on CornStack with Ray and DeepSpeed."""

from sparse_ray.config import Config, load_config
from sparse_ray.errors import ConfigError, DataError, UserError
from sparse_ray.index import Hit, Index
from sparse_ray.model import build_model

__all__ = ["Config", "ConfigError", "DataError", "Hit", "Index", "UserError", "build_model", "load_config"]
__version__ = "0.1.0"
