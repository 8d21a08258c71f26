"""Students, teachers, methods. Importing this package registers fastdisco's extra timm
architectures (SwAV's wide ResNet-50s: models/swav_resnet.py) under their timm names."""
import fastdisco._compat  # noqa: F401  (torchvision import fix before timm)
from fastdisco.models import swav_resnet  # noqa: F401  (registers resnet50w2 / resnet50w4 with timm)
