"""Augmentation: recipes (view distributions, normalisation, eval crop) -> per-batch params drawn on
the host -> the same ops applied batched on an accelerator (`device`) or image by image on the CPU
(`cpu`, with its fused numba kernel `cpu_fused`). `Augment` ties them together for the loaders.

The room's public names, importable from here: `from fastdisco import augment as A; A.Augment`.
"""
from fastdisco.augment import ops
from fastdisco.augment.cpu import (CPU_KERNELS, CpuPool, augment_cpu, color_one, cpu_kernel, crop_one,
                                   photometric_cpu, set_cpu_kernel, warm_up_cpu)
from fastdisco.augment.device import color_view, crop_view, normalize
from fastdisco.augment.params import (batch_seed, center_box, eval_resize, host_params, make_generator, sample_params,
                                      sample_rrc, sample_view_params)
from fastdisco.augment.pipeline import Augment, apply_view
from fastdisco.augment.recipes import (EVAL_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, RECIPES, ViewSpec,
                                       blur_kernel_size, norm_consts, recipe_views)

__all__ = ["Augment", "apply_view", "ops", "CPU_KERNELS", "CpuPool", "augment_cpu", "color_one", "cpu_kernel",
           "crop_one", "photometric_cpu", "set_cpu_kernel", "warm_up_cpu", "color_view", "crop_view", "normalize",
           "batch_seed", "center_box", "eval_resize", "host_params", "make_generator", "sample_params", "sample_rrc",
           "sample_view_params", "EVAL_CROP_RATIO", "IMAGENET_MEAN", "IMAGENET_STD", "RECIPES", "ViewSpec",
           "blur_kernel_size", "norm_consts", "recipe_views"]
