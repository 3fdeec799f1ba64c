"""The package installs with its kernels inside, and imports without a GPU or interpreter."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_kernels_as_subpackage(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("coreai_opt_gpu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "coreai_opt_gpu/kernels/__init__.py" in names
    assert "coreai_opt_gpu/kernels/lut_dequant.py" in names
    assert not any(name.startswith("kernels/") for name in names)
    # every source module of the repository ships in the wheel
    sources = {
        f"coreai_opt_gpu/{p.relative_to(ROOT / 'coreai_opt_gpu')}"
        for pattern in ("*.py", "*.c")  # the host path's C source is built on first use
        for p in (ROOT / "coreai_opt_gpu").rglob(pattern)
    }
    sources |= {
        f"coreai_opt_gpu/kernels/{p.relative_to(ROOT / 'kernels')}"
        for p in (ROOT / "kernels").rglob("*.py")
    }
    assert sources <= set(names), sorted(sources - set(names))


@pytest.mark.slow
def test_import_touches_no_gpu_and_no_kernel():
    code = (
        "import sys, torch\n"
        "import coreai_opt_gpu, coreai_opt_gpu.palettization, coreai_opt_gpu.quantization\n"
        "import coreai_opt_gpu.palettization.spec, coreai_opt_gpu.quantization.spec\n"
        "import coreai_opt_gpu.ops, coreai_opt_gpu.engine, coreai_opt_gpu.config\n"
        "assert not torch.cuda.is_initialized()\n"
        "assert 'triton' not in sys.modules, 'triton imported at package import'\n"
        "assert 'coreai_opt_gpu.kernels.lut_dequant' not in sys.modules\n"
        "print(coreai_opt_gpu.__version__, [b.value for b in coreai_opt_gpu.ExportBackend])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "coreai" in done.stdout and "torch" in done.stdout


def test_public_names():
    from coreai_opt_gpu import ExportBackend
    from coreai_opt_gpu.palettization import (  # noqa: F401
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
        OpKMeansPalettizerConfig,
        PalettizationSpec,
    )
    from coreai_opt_gpu.palettization.spec import (  # noqa: F401
        PerGroupedChannelGranularity,
        PerTensorGranularity,
        default_weight_palettization_spec,
    )
    from coreai_opt_gpu.quantization import (  # noqa: F401
        ModuleQuantizerConfig,
        OpQuantizerConfig,
        QuantizationSpec,
        QuantizerConfig,
    )
    from coreai_opt_gpu.quantization.spec import (  # noqa: F401
        PerBlockGranularity,
        PerChannelGranularity,
        QuantizationScheme,
    )

    assert {"CoreAI", "CoreML", "Torch"} <= set(ExportBackend.__members__)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    blocks = readme.split("```bash\n")[1:3]
    setup_command, test_command = (block.split("\n```")[0].strip() for block in blocks)
    assert test_command in ci
    assert setup_command.split(" && ")[0] in ci
