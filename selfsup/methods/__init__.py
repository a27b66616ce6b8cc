"""The method registry: a plain dict from name to Method class. A new method is one file plus one line here."""

from __future__ import annotations

from selfsup.methods.ae import AE
from selfsup.methods.barlow import BarlowTwins
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.byol import BYOL
from selfsup.methods.cae import CAE
from selfsup.methods.colorization import Colorization
from selfsup.methods.cpc import CPC
from selfsup.methods.dae import DAE
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.dino import DINO
from selfsup.methods.inpainting import Inpainting
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.mae import MAE
from selfsup.methods.moco import MoCo
from selfsup.methods.npid import NPID
from selfsup.methods.relpatch import RelPatch
from selfsup.methods.rotnet import RotNet
from selfsup.methods.sela import SeLa
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.splitbrain import SplitBrain
from selfsup.methods.superres import SuperRes
from selfsup.methods.swav import SwAV
from selfsup.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    SimCLR.name: SimCLR,
    MoCo.name: MoCo,
    NPID.name: NPID,
    CPC.name: CPC,
    BYOL.name: BYOL,
    SimSiam.name: SimSiam,
    AE.name: AE,
    DAE.name: DAE,
    CAE.name: CAE,
    RelPatch.name: RelPatch,
    RotNet.name: RotNet,
    Jigsaw.name: Jigsaw,
    Colorization.name: Colorization,
    Inpainting.name: Inpainting,
    SplitBrain.name: SplitBrain,
    SuperRes.name: SuperRes,
    BarlowTwins.name: BarlowTwins,
    VICReg.name: VICReg,
    DINO.name: DINO,
    SwAV.name: SwAV,
    DeepCluster.name: DeepCluster,
    SeLa.name: SeLa,
    MAE.name: MAE,
}

__all__ = ["METHODS", "Method", "MethodConfig"]
