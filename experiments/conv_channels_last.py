"""The conv autoencoder's train step (forward, backward, fastae's Adam) with its conv layers as
fastae.models.conv builds them (channels-last weights, in-place ReLU: "after") against NCHW weights
and out-of-place ReLU ("before"), in one process, alternating, seven rounds; medians in ms.
fastae.keep_freed_memory() first, as the fastae command runs.

    python experiments/conv_channels_last.py BATCH fp32|bf16
"""
import sys
import time

import torch
import fastae; fastae.keep_freed_memory()
from fastae.models import build_model
import fastae.models.conv as conv
from fastae.train.fit import make_optimizer
torch.manual_seed(0)
B=int(sys.argv[1]); dt=sys.argv[2]
x=torch.rand(B,1,28,28)
def mk(new):
    orig = conv._channels_last
    if not new: conv._channels_last = lambda l: l
    torch.manual_seed(0); m = build_model('conv')
    conv._channels_last = orig
    if not new:
        for mod in m.modules():
            if isinstance(mod, torch.nn.ReLU): mod.inplace = False
    opt = make_optimizer('adam', list(m.parameters()), lr=1e-3)
    amp = dt=='bf16'
    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            loss=m.loss(x)['loss']
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return step
steps={'before':mk(False),'after':mk(True)}
for s in steps.values():
    for _ in range(3): s()
res={k:[] for k in steps}
n = 2 if B > 1000 else 10
for r in range(7):
    for k,s in steps.items():
        t=time.perf_counter()
        for _ in range(n): s()
        res[k].append((time.perf_counter()-t)/n*1000)
med={k:sorted(v)[3] for k,v in res.items()}
print(B, dt, {k:round(v,1) for k,v in med.items()}, 'after speedup', round(med['before']/med['after'],3))
