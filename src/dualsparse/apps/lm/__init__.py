"""Word-level language modelling on PTB / WikiText-2: the LM app.

* :mod:`.config`: :class:`LMConfig` (model, data, run, prune sections) with a JSON round trip;
  :mod:`.presets`: named recipes as config values;
* :mod:`.task`: :class:`LMTask`, what the :class:`~dualsparse.train.loop.Trainer` drives;
* :mod:`.evaluate`: :func:`evaluate_lm` (perplexity, activity, MACs) and :func:`test_report`;
* :mod:`.prune`: the pruner a config describes and pruning of a trained run in rounds;
* :mod:`.runs`: the model stored in a run folder; :mod:`.commands`: train / eval / prune;
  :mod:`.flags`: their command-line flags (``dest`` = config field name).
"""

from dualsparse.apps.lm.config import DataConfig, LMConfig, ModelConfig, PruneConfig, RunConfig
from dualsparse.apps.lm.evaluate import carry_state, evaluate_lm, test_report
from dualsparse.apps.lm.presets import PRESETS, get_preset, preset_config
from dualsparse.apps.lm.task import LMTask

__all__ = ["DataConfig", "LMConfig", "LMTask", "ModelConfig", "PRESETS", "PruneConfig",
           "RunConfig", "carry_state", "evaluate_lm", "get_preset", "preset_config",
           "test_report"]
