"""Import zennit on machines where torchvision cannot be imported.

`import zennit` imports `zennit.torchvision`, which imports
`torchvision.models.resnet` only to recognise torchvision's ResNet blocks in
its ResNet canonizers. No torchvision wheel works beside the CPU torch these
machines use (see docs/method.md, "Relevance"), and ParallelResidualNet
does not use those canonizers. So, only where `import torchvision` fails, we
register a stand-in package that holds two empty placeholder classes; the
ResNet canonizers then match nothing, and everything else in zennit is
untouched. Where a working torchvision exists, it is used as is.

Import zennit through this module (`from worker.ml.zennit_compat import zennit`)
or call `ensure_zennit()` before the first `import zennit`.
"""

import importlib
import sys
import types

STAND_IN_MARKER = "__xal_stand_in__"


def _register_torchvision_stand_in() -> None:
    package = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock:  # never instantiated: isinstance checks against it are always False
        pass

    class Bottleneck:
        pass

    setattr(resnet, "BasicBlock", BasicBlock)
    setattr(resnet, "Bottleneck", Bottleneck)
    setattr(models, "resnet", resnet)
    setattr(package, "models", models)
    for module in (package, models, resnet):
        setattr(module, STAND_IN_MARKER, True)
        sys.modules[module.__name__] = module


def ensure_zennit() -> types.ModuleType:
    """Import and return zennit, registering the torchvision stand-in if needed."""
    if "zennit" in sys.modules:
        return sys.modules["zennit"]
    try:
        importlib.import_module("torchvision.models.resnet")
    except Exception:  # noqa: BLE001 - a broken wheel raises RuntimeError, not ImportError
        # A failed import can leave half-initialised submodules behind.
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        _register_torchvision_stand_in()
    return importlib.import_module("zennit")


zennit = ensure_zennit()
