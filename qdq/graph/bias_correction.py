"""Bias correction (Nagel et al. 2019, "Data-Free Quantization", empirical form): INT8 rounding and
clipping shift a layer's output by a per-channel mean error e_c = E[y_q,c − y_c], measured on
calibration data by :mod:`qdq.measure.analysis` (raw layer output, input and weight quantized, FP32 inputs).
Folding −e_c into the layer's bias removes the shift users see as "shifted" outputs.

Two corrections are measured: the mean error with input and weight quantized ("full", which also
takes out shifts that activation rounding causes, e.g. on SiLU's negative lobe), and with only the
weight quantized ("weights").  Which one a model gets, if any, is decided on held-back samples
(:func:`qdq.pipeline.quantize`): a full correction averaged over positions the model later ignores
(padding tokens under a masked pooling) can make the output worse.

Where the correction goes: the bias input of Conv / ConvTranspose / Gemm (added when absent); for a
MatMul, the constant of the Add that follows it alone (its bias), else a new Add.  The correction is
computed in float64 and stored in the bias dtype.
"""
from __future__ import annotations

import numpy as np

from ..modelio import fresh_name
from .surgery import gs


def apply(graph, nodes, bias: dict, taken: set) -> int:
    """Fold ``bias[node id]`` (mean error per output channel) into the layers of a gs ``graph``
    whose original nodes are ``nodes`` (by id).  Returns how many layers were corrected."""
    g = gs()
    done = 0
    for pos, err in bias.items():
        node = nodes[pos]
        err = np.asarray(err, np.float64)
        if not np.all(np.isfinite(err)) or not np.any(err):
            continue
        if node.op in ("Conv", "ConvTranspose", "Gemm"):
            if node.op == "Gemm" and (float(node.attrs.get("beta", 1.0)) != 1.0):
                continue
            old = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
            if old is not None and not isinstance(old, g.Constant):
                continue
            base = np.zeros(err.size) if old is None else np.asarray(old.values, np.float64)
            if base.size not in (1, err.size):
                continue
            new = g.Constant(fresh_name(f"{old.name if old is not None else node.name + '_bias'}_corrected", taken),
                             (base - err).astype(np.float32).reshape(-1))
            if len(node.inputs) > 2:
                node.inputs[2] = new
            else:
                node.inputs.append(new)
            done += 1
        elif node.op == "MatMul":
            out = node.outputs[0]
            users = list(out.outputs)
            add = users[0] if len(users) == 1 and users[0].op == "Add" else None
            const = next((t for t in add.inputs if isinstance(t, g.Constant)), None) if add is not None else None
            if const is not None and np.asarray(const.values).shape in ((err.size,),):
                i = add.inputs.index(const)
                add.inputs[i] = g.Constant(fresh_name(f"{const.name}_corrected", taken),
                                           (np.asarray(const.values, np.float64) - err).astype(np.dtype(const.dtype)))
            else:
                fixed = g.Variable(fresh_name(f"{out.name}_uncorrected", taken), dtype=out.dtype, shape=out.shape)
                node.outputs[0] = fixed
                graph.nodes.append(g.Node("Add", fresh_name(f"{node.name}_bias_correction", taken),
                                          inputs=[fixed, g.Constant(fresh_name(f"{node.name}_correction", taken),
                                                                    (-err).astype(np.float32))], outputs=[out]))
            done += 1
    return done
