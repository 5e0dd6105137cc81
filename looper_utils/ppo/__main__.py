"""``python -m looper_utils.ppo`` / ``accelerate launch -m looper_utils.ppo``: 05 without the notebook."""
import sys

from .trainer import main

sys.exit(main())
