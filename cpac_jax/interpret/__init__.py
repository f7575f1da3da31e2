"""What the factors say: CP feature-map significance (CPAC-Conv) and Tucker
factor importance (TTL). Analysis only: no training, no files; the
experiments that retrain and plot are `cpac_jax.interpret.experiments`,
run by `python -m cpac_jax.interpret`."""

from cpac_jax.interpret.importance import (
    importance_map,
    tucker_factor_importance,
)
from cpac_jax.interpret.significance import (
    cp_feature_significance,
    feature_selection,
)

__all__ = ["cp_feature_significance", "feature_selection", "importance_map",
           "tucker_factor_importance"]
