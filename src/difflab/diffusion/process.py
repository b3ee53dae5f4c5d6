"""The Gaussian forward process and the conversions between its parameterisations.

:class:`GaussianDiffusion` is the only owner of alphas_cumprod and every coefficient derived
from the betas. All of them are computed once in float64 and registered as float64 buffers, so
``.to(device)`` and checkpoints carry them. When a coefficient is taken for a batch it is
indexed at ``t`` in float64 and only then cast to the dtype of the input tensor.

Notation (code name -> paper symbol; Ho et al. 2020, arXiv:2006.11239):

- ``betas``                      -> beta_t
- ``alphas``                     -> alpha_t = 1 - beta_t
- ``alphas_cumprod``             -> alpha-bar_t
- ``alphas_cumprod_prev``        -> alpha-bar_{t-1} (1 for t = 0)
- ``posterior_variance``         -> beta-tilde_t (eq. 7)
- ``posterior_mean_coef1/2``     -> the coefficients of x_0 and x_t in mu-tilde_t (eq. 7)
- ``x0``, ``x_t``, ``eps``, ``v`` -> x_0, x_t, epsilon, v (Salimans & Ho 2022, arXiv:2202.00512)

Timesteps are 0-based: ``t = 0`` is the first noising step and ``t = T - 1`` the last.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.diffusion.schedules import get_beta_schedule

__all__ = ["PREDICTION_TYPES", "GaussianDiffusion"]

#: What a model may predict: the noise, the clean sample, or the velocity.
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v")


class GaussianDiffusion(nn.Module):
    """Forward process q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I) (Ho et al. 2020, eq. 4).

    Works for any tensor rank: images (B, C, H, W) and toy data (B, D) alike. ``t`` is always a
    LongTensor of shape (B,) with values in ``[0, num_timesteps - 1]``.

    Zero terminal SNR (alphas_cumprod[-1] == 0, Lin et al. 2023, arXiv:2305.08891): x_T is pure
    noise. The v and x0 conversions stay finite there (v-prediction gives x_0 = -v,
    eps = x_t). Recovering x_0 from an eps-prediction divides by sqrt(alpha-bar_T) = 0 and gives
    non-finite values: x_0 is not defined by eps at that step, so pair such schedules with the
    v or x0 prediction type.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __init__(self, betas: Tensor) -> None:
        super().__init__()
        betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            raise ValueError(
                f"betas must lie in (0, 1], got min {betas.min().item():.4g}, max {betas.max().item():.4g}"
            )

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])

        # Posterior q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I), Ho et al. 2020 eqs. 6-7.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta-tilde_0 = 0: the log is clipped by using beta-tilde_1 at t = 0
        # (Nichol & Dhariwal 2021, improved-diffusion ``posterior_log_variance_clipped``).
        if posterior_variance.numel() > 1:
            clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        else:
            clipped = betas.clone()
        posterior_log_variance_clipped = torch.log(clipped)
        posterior_mean_coef1 = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod)

        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            # inf where alphas_cumprod == 0 (zero terminal SNR); see the class docstring.
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": posterior_mean_coef1,
            "posterior_mean_coef2": posterior_mean_coef2,
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float64))

    @classmethod
    def from_schedule(
        cls,
        name: str = "linear",
        num_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        **schedule_kwargs: float,
    ) -> "GaussianDiffusion":
        """Build the process from a named schedule (see :func:`~difflab.diffusion.schedules.get_beta_schedule`)."""
        return cls(get_beta_schedule(name, num_timesteps, zero_terminal_snr, **schedule_kwargs))

    @property
    def num_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return int(self.betas.shape[0])

    def extra_repr(self) -> str:
        return f"num_timesteps={self.num_timesteps}"

    # ------------------------------------------------------------------ helpers
    def _check_t(self, t: Tensor, x: Tensor | None = None, name: str = "x") -> None:
        integer = isinstance(t, Tensor) and not (
            t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool
        )
        if not integer or t.ndim != 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            dtype = t.dtype if isinstance(t, Tensor) else None
            raise ValueError(f"t must be an integer tensor of shape (B,), got {shape} with dtype {dtype}")
        if x is not None and (x.ndim < 1 or x.shape[0] != t.shape[0]):
            raise ValueError(
                f"t has batch size {t.shape[0]} but {name} has shape {tuple(x.shape)}; "
                "they must share the first dimension"
            )
        # The range is checked on the host only, to avoid a device sync in training; on an
        # accelerator an out-of-range index raises a device-side error instead.
        if t.device.type == "cpu" and t.numel() > 0:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.num_timesteps:
                raise ValueError(
                    f"t must lie in [0, {self.num_timesteps - 1}], got values in [{lo}, {hi}]"
                )

    @staticmethod
    def _check_same_shape(**tensors: Tensor) -> None:
        shapes = {name: tuple(x.shape) for name, x in tensors.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"shapes must match, got {shapes}")

    @staticmethod
    def _extract(buffer: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``buffer[t]`` in float64, then cast to ``x``'s dtype/device and shaped (B, 1, ..., 1)."""
        out = buffer[t.to(buffer.device)]
        dtype = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
        return out.to(device=x.device, dtype=dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def alphas_cumprod_at(self, t: int | Tensor) -> Tensor:
        """alpha-bar at ``t`` in float64, with alpha-bar = 1 for ``t < 0``.

        ``t = -1`` is the "previous" timestep of the last sampling step, where the sample is
        clean (diffusers ``set_alpha_to_one=True``). An ``int`` gives a 0-d tensor, an integer
        tensor a tensor of the same shape; both live on the buffers' device.
        """
        if isinstance(t, Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"t must be an integer tensor, got dtype {t.dtype}")
            t = t.to(self.alphas_cumprod.device)
            if t.device.type == "cpu" and t.numel() > 0 and int(t.max()) >= self.num_timesteps:
                raise ValueError(f"t must be < {self.num_timesteps}, got {int(t.max())}")
            values = self.alphas_cumprod[t.clamp(min=0)]
            return torch.where(t < 0, torch.ones_like(values), values)
        if isinstance(t, bool) or not isinstance(t, int) or t >= self.num_timesteps:
            raise ValueError(f"t must be an int < {self.num_timesteps} (negative means alpha-bar = 1), got {t!r}")
        if t < 0:
            return self.alphas_cumprod.new_ones(())
        return self.alphas_cumprod[t]

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t) (Kingma et al. 2021, arXiv:2107.00630, eq. 1).

        Returns float64, shape (B,), on the buffers' device: the weights derived from it are
        computed in float64 before being cast to the loss dtype. It is 0 at a zero-terminal-SNR step.
        """
        self._check_t(t)
        ab = self.alphas_cumprod[t.to(self.alphas_cumprod.device)]
        return ab / (1.0 - ab)

    # ------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0): sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (Ho et al. 2020, eq. 4)."""
        self._check_same_shape(x0=x0, noise=noise)
        self._check_t(t, x0, "x0")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).

        mu-tilde_t = sqrt(alpha-bar_{t-1}) beta_t / (1 - alpha-bar_t) x_0
        + sqrt(alpha_t) (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) x_t;
        beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) beta_t.
        The variances have shape (B, 1, ..., 1).
        """
        self._check_same_shape(x0=x0, x_t=x_t)
        self._check_t(t, x_t, "x_t")
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # ------------------------------------------------- eps <-> x0 <-> v conversions
    def predict_start_from_noise(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t) (Ho et al. 2020, eq. 15 inverted).

        Non-finite where alpha-bar_t == 0 (zero terminal SNR): x_t = eps there holds no x_0.
        """
        self._check_same_shape(x_t=x_t, eps=eps)
        self._check_t(t, x_t, "x_t")
        return (
            x_t - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps
        ) / self._extract(self.sqrt_alphas_cumprod, t, x_t)

    def predict_noise_from_start(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(alpha-bar_t) x_0) / sqrt(1 - alpha-bar_t) (Ho et al. 2020, eq. 4 solved for eps)."""
        self._check_same_shape(x_t=x_t, x0=x0)
        self._check_t(t, x_t, "x_t")
        return (
            x_t - self._extract(self.sqrt_alphas_cumprod, t, x_t) * x0
        ) / self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def predict_v(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0 (Salimans & Ho 2022, arXiv:2202.00512, sec. 4)."""
        self._check_same_shape(x0=x0, eps=eps)
        self._check_t(t, x0, "x0")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * eps
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def predict_start_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(alpha-bar_t) x_t - sqrt(1 - alpha-bar_t) v (Salimans & Ho 2022, appendix D)."""
        self._check_same_shape(x_t=x_t, v=v)
        self._check_t(t, x_t, "x_t")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def predict_noise_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(alpha-bar_t) v + sqrt(1 - alpha-bar_t) x_t (Salimans & Ho 2022, appendix D)."""
        self._check_same_shape(x_t=x_t, v=v)
        self._check_t(t, x_t, "x_t")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_t) * v
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        )

    def split_prediction(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, prediction_type: str
    ) -> tuple[Tensor, Tensor]:
        """Turn a model output of type ``eps | x0 | v`` into ``(pred_x0, pred_eps)``.

        The one place where samplers dispatch on the prediction type.
        """
        self._check_same_shape(model_output=model_output, x_t=x_t)
        if prediction_type == "eps":
            pred_eps = model_output
            pred_x0 = self.predict_start_from_noise(x_t, t, model_output)
        elif prediction_type == "x0":
            pred_x0 = model_output
            pred_eps = self.predict_noise_from_start(x_t, t, model_output)
        elif prediction_type == "v":
            pred_x0 = self.predict_start_from_v(x_t, t, model_output)
            pred_eps = self.predict_noise_from_v(x_t, t, model_output)
        else:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}"
            )
        return pred_x0, pred_eps

    def target(self, prediction_type: str, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of a model that predicts ``prediction_type`` (eps, x0 or v)."""
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}"
            )
        self._check_same_shape(x0=x0, noise=noise)
        self._check_t(t, x0, "x0")
        if prediction_type == "eps":
            return noise
        if prediction_type == "x0":
            return x0
        return self.predict_v(x0, t, noise)
