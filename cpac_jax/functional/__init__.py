"""The factorized contractions as pure functions, (x, factors, geometry) ->
y, and their multiply-add counts: what the layers in `cpac_jax.layers` call.
No Flax, no state."""

from cpac_jax.functional.batch_norm import batch_norm
from cpac_jax.functional.conv import (
    ConvGeometry,
    auto_conv_general_dilated,
    patches_conv,
    winograd_conv,
)
from cpac_jax.functional.cp_conv import cp_conv, cp_conv_flops
from cpac_jax.functional.implementation import (
    IMPLEMENTATIONS,
    INTERMEDIATE_COST,
    check_implementation,
    choose,
)
from cpac_jax.functional.low_rank import low_rank_dense, low_rank_dense_flops
from cpac_jax.functional.tt import (
    TTDensePlan,
    tt_conv,
    tt_conv_flops,
    tt_conv_kernel,
    tt_dense,
    tt_dense_by_plan,
    tt_dense_flops,
    tt_dense_plan,
    tt_dense_plans,
)
from cpac_jax.functional.tucker_conv import (
    tucker_conv,
    tucker_conv_flops,
    tucker_conv_modes,
)
from cpac_jax.functional.tucker_dense import (
    batch_shape,
    tucker_dense,
    tucker_dense_flops,
)

__all__ = [
    "IMPLEMENTATIONS",
    "INTERMEDIATE_COST",
    "ConvGeometry",
    "TTDensePlan",
    "auto_conv_general_dilated",
    "batch_norm",
    "batch_shape",
    "check_implementation",
    "choose",
    "cp_conv",
    "cp_conv_flops",
    "low_rank_dense",
    "low_rank_dense_flops",
    "patches_conv",
    "tt_conv",
    "tt_conv_flops",
    "tt_conv_kernel",
    "tt_dense",
    "tt_dense_by_plan",
    "tt_dense_flops",
    "tt_dense_plan",
    "tt_dense_plans",
    "tucker_conv",
    "tucker_conv_flops",
    "tucker_conv_modes",
    "tucker_dense",
    "tucker_dense_flops",
    "winograd_conv",
]
