"""Pure-JAX tensor algebra: no Flax, no state, no I/O."""

from cpac_jax.tensor.base import (
                                  fold,
                                  khatri_rao,
                                  kronecker,
                                  mode_dot,
                                  multi_mode_dot,
                                  unfold,
)
from cpac_jax.tensor.cp import (
                                  CPTensor,
                                  cp_als,
                                  cp_factor_grads,
                                  cp_to_tensor,
                                  mttkrp,
)
from cpac_jax.tensor.rank import (
                                  RankSpec,
                                  cp_num_params,
                                  cp_rank,
                                  tt_max_ranks,
                                  tt_num_params,
                                  tt_rank,
                                  tucker_num_params,
                                  tucker_rank,
)
from cpac_jax.tensor.tt import (
                                  tt_matrix_svd,
                                  tt_matrix_to_tensor,
                                  tt_svd,
                                  tt_to_tensor,
)
from cpac_jax.tensor.tucker import (
                                  TuckerTensor,
                                  hooi,
                                  hosvd,
                                  tucker,
                                  tucker_grads,
                                  tucker_to_tensor,
)

__all__ = [
    "CPTensor",
    "RankSpec",
    "TuckerTensor",
    "cp_als",
    "cp_factor_grads",
    "cp_num_params",
    "cp_rank",
    "cp_to_tensor",
    "fold",
    "hooi",
    "hosvd",
    "khatri_rao",
    "kronecker",
    "mode_dot",
    "mttkrp",
    "multi_mode_dot",
    "tt_matrix_svd",
    "tt_matrix_to_tensor",
    "tt_max_ranks",
    "tt_num_params",
    "tt_rank",
    "tt_svd",
    "tt_to_tensor",
    "tucker",
    "tucker_grads",
    "tucker_num_params",
    "tucker_rank",
    "tucker_to_tensor",
    "unfold",
]
