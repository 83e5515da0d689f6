"""The shared base of every experiment config: all fields, with defaults.

An experiment file calls `get_base_config()` (or a data set base in `datasets.py`) and
overrides what it reproduces. Every field is overridable on the command line:
  python -m vdm.main --config=configs/digits_ddpm.py --config.training.num_steps=100
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data (vdm.data.load_dataset reads these).
  config.data = d = ml_collections.ConfigDict()
  d.dataset = "digits"        # digits | mnist | cifar10 | toy2d | gaussian
  d.data_dir = ""             # directory of the original files (mnist, cifar10)
  d.seed = 0                  # synthetic data (toy2d, gaussian)
  d.random_flip = False
  d.pad_to_32 = False         # mnist: pad 28x28 to 32x32
  d.use_tfds = False
  d.tfds_data_dir = ""
  d.toy_name = "swiss_roll"   # swiss_roll | two_moons | eight_gaussians
  d.toy_noise = ml_collections.config_dict.placeholder(float)  # None = per-toy default
  d.dim = 2                   # gaussian: dimension
  d.num_train = 10000         # synthetic sets
  d.num_test = 2000
  d.dequantize = False        # uniform dequantization + a continuous decoder

  # Model: the bound (objective) and the denoiser.
  config.model = m = ml_collections.ConfigDict()
  m.objective = "ddpm"        # ddpm | vdm
  m.denoiser = "unet"         # unet | mlp
  m.ch = 32
  m.ch_mult = (1, 2)
  m.num_res_blocks = 1
  m.attn_resolutions = (4,)
  m.dropout = 0.0
  m.resamp_with_conv = True
  m.num_groups = 8
  m.dtype = "float32"         # float32 | bfloat16 (compute dtype)
  m.fourier_features = ()     # VDM: exponents n of sin/cos(2^n pi x) input features
  m.zero_init_out = False
  m.mlp_hidden = 256
  m.mlp_num_blocks = 3

  # DDPM (model.objective = 'ddpm').
  config.diffusion = f = ml_collections.ConfigDict()
  f.num_timesteps = 1000
  f.beta_schedule = "linear"  # linear | cosine | quad | const | jsd
  f.beta_start = 1e-4
  f.beta_end = 0.02
  f.mean_type = "eps"         # eps | x0 | mean
  f.var_type = "fixed_large"  # fixed_small | fixed_large | learned | learned_range
  f.loss_type = "mse"         # kl | mse | hybrid
  f.hybrid_lambda = 0.001
  f.timestep_sampler = "uniform"  # uniform | importance
  f.decoder_approx = ml_collections.config_dict.placeholder(str)  # None (exact) | "tanh"
  f.clip_denoised = True      # clip x0 predictions when sampling
  f.clip_bound = False        # also inside the bound (as the DDPM / improved-diffusion eval code)
  f.t_chunk_size = 50         # timesteps per chunk in calc_bpd

  # VDM (model.objective = 'vdm').
  config.vdm = v = ml_collections.ConfigDict()
  v.gamma_type = "learned_linear"  # fixed_linear | learned_linear | learned_net (monotone)
  v.gamma_min = -13.3
  v.gamma_max = 5.0
  v.num_timesteps = 0         # 0 = continuous time; T > 0 = the discrete-time bound
  v.antithetic = True
  v.sample_steps = 200        # steps of the ancestral sampler

  config.optimizer = o = ml_collections.ConfigDict()
  o.name = "adam"             # adam | adamw
  o.learning_rate = 2e-4
  o.warmup_steps = 0
  o.schedule = "constant"     # constant | cosine
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0        # adamw: applied to kernels only (not biases or norm scales)
  o.grad_clip = 1.0           # clip by global norm; 0 = off
  o.ema_rate = 0.999

  config.training = t = ml_collections.ConfigDict()
  t.num_steps = 1000
  t.batch_size = 64           # global, over all devices and hosts
  t.substeps = 1              # optimizer steps per pmap dispatch (lax.scan)
  t.unroll_substeps = None    # unroll that scan; None = on CPU (see train.unroll_substeps)
  t.steps_per_log = 100
  t.steps_per_eval = 1000
  t.steps_per_save = 500
  t.keep_checkpoints = 3
  t.keep_period = 0           # also keep every keep_period-th step permanently; 0 = off
  t.num_devices = 0           # local devices to use; 0 = all
  t.compiler_options = "auto"  # auto (table on AMD CPUs, else probe) | probe | none (XLA)

  config.eval = e = ml_collections.ConfigDict()
  e.batch_size = 64           # global
  e.num_examples = 0          # held-out examples in the periodic bound; 0 = all
  e.num_samples = 64          # PNG grid of samples at each eval; 0 = none
  e.at_start = False          # also evaluate (and sample) before the first step

  # Likelihoods beyond the bound (--mode=iwbound, --mode=ode_nll); they never change training,
  # so every field here may change on resume (vdm.train.rundir.RESUMABLE_GROUPS).
  config.likelihood = l = ml_collections.ConfigDict()
  l.num_examples = 64         # held-out examples (the first ones); 0 = all
  l.batch_size = 16           # examples per call (global, over the devices)
  l.iw_num_samples = (1, 10, 100)  # K of the importance-weighted bounds
  l.iw_chunk_size = 16        # trajectories evaluated together (memory is linear in it)
  l.ode_rtol = 1e-5           # adaptive solver tolerances
  l.ode_atol = 1e-5
  l.ode_solver = "dopri5"     # dopri5 | tsit5 | heun | euler (vdm.diffusion.ode.SOLVERS)
  l.ode_num_steps = 0         # 0 = adaptive steps (rtol, atol); N > 0 = N fixed steps
  l.ode_t0 = 1e-3             # start of the integration in (0, 1)
  l.ode_interpolation = "auto"   # DDPM: log alphas_cumprod in continuous time (ode.DDPMProcess)
  l.ode_divergence = "hutchinson"  # hutchinson | exact (a Jacobian: small D only)
  l.ode_probe = "rademacher"  # rademacher | gaussian (Hutchinson probes)
  l.ode_num_probes = 1

  # Bits-back compression of the held-out split (--mode=compress, --mode=decompress;
  # vdm.coding): never changes training, so every field may change on resume. The compressed
  # file records the settings it was written with; decompress reads them from the file.
  config.coding = c = ml_collections.ConfigDict()
  c.num_examples = 0          # held-out examples compressed (the first ones); 0 = all
  c.batch_size = 64           # examples coded in lockstep: one network call serves the batch
  c.precision_bits = 12       # latent grid step 2**-precision_bits (overhead ~ (step/std)**2)
  c.latent_range = 8.0        # latents coded on [-latent_range, latent_range]
  c.seed = 0                  # generator of the seed ("clean") bits the first pops draw from
  c.verify = True             # compress also decodes its file and compares with the data
  c.bound_draws = 1           # draws of the bound averaged per example (the comparison's noise)
  return config
