"""vdm: exact variational bounds on log-likelihood, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
  name="vdm",
  version="0.1.0",
  description="Variational bounds on log-likelihood: exact enumerated ELBOs, the DDPM "
  "bound term by term, the VDM continuous-time bound, and a pmapped training loop.",
  packages=find_packages(include=["vdm", "vdm.*", "experiments", "configs", "configs.*"]),
  # The prose of the experiments' reports (experiments.common.report_text).
  package_data={"experiments": ["reports/*.md"]},
  python_requires=">=3.10",
  install_requires=[
    "jax>=0.9,<0.11",
    "flax>=0.11,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "ml_collections>=1.0,<2",
    "absl-py>=2.0,<3",
    "numpy>=1.26,<3",
    "scikit-learn>=1.4,<2",
    # The probability-flow ODE likelihood (vdm.diffusion.ode): jittable adaptive solves.
    "diffrax>=0.7,<0.8",
    # Bits-back coding (vdm.coding): the ANS entropy coder. A core dependency because it is a
    # small self-contained wheel (Rust core, numpy only) and the coding tests run in CI from
    # `pip install -e ".[test]"`.
    "constriction>=0.5,<0.6",
  ],
  extras_require={
    # Figures (PNG plots of bound terms) and TensorBoard event files.
    "extras": ["matplotlib>=3.8,<4", "tensorboardX>=2.6,<3"],
    # Independent reference computations used by the tests (mpmath: high-precision references
    # of the numerics tests; numpyro: the IWAE benchmark's peer).
    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "scipy>=1.11,<2", "matplotlib>=3.8,<4",
        "tensorboardX>=2.6,<3", "numpyro>=0.15,<0.30", "mpmath>=1.3,<2"],
    # Peers measured by the benchmark scripts.
    "bench": ["numpyro>=0.15,<0.30", "funsor>=0.4,<0.5"],
  },
)
