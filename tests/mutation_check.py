"""Mutation check of the Dual Teacher tests: every behaviour of the table "Dual Teacher: faithful
and clean" in ``docs/methods.md`` (``docs/method.md`` F1-F18, and the official details both
modes share) is changed on purpose in a copy of ``src/``, and the tests that pin it must fail.

    python tests/mutation_check.py            # every mutation, a Markdown table on stdout
    python tests/mutation_check.py 17 42      # only these (numbers as listed)

Each mutation replaces one or more exact snippets (each must occur exactly once) in a
temporary copy of ``src/`` and runs the listed test files against it (``PYTHONPATH``), never
touching the checkout. Not collected by pytest (the name does not start with ``test_``); it
takes about an hour on two cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DT = "dualteacher/methods/dual_teacher.py"
MIX = "dualteacher/methods/mixing.py"
EMA = "dualteacher/methods/ema.py"
CFG = "dualteacher/config.py"
T_DT = "tests/test_dual_teacher.py"
T_MIX = "tests/test_mixing.py"
T_EMA = "tests/test_ema.py"
T_DATA = "tests/test_data.py"
T_REC = "tests/test_official_recipe.py"


@dataclass
class Mutation:
    behaviour: str
    file: str
    edits: list[tuple[str, str]]
    tests: tuple[str, ...] = (T_DT,)


def m(behaviour, file, old, new, *tests):
    return Mutation(behaviour, file, [(old, new)], tests or (T_DT,))


# fmt: off
MUTATIONS = [
    # --- F7 teacher mode
    m("faithful teachers predict in eval mode", DT,
      "teacher.train(self.flags.teachers_train_mode)", "teacher.train(False)"),
    m("clean teachers predict in train mode", DT,
      "teacher.train(self.flags.teachers_train_mode)", "teacher.train(True)"),
    m("mode flags: train-mode teachers in clean", DT,
      "teachers_train_mode=official", "teachers_train_mode=True"),
    # --- F3 IC mask
    m("faithful IC mask from the unlabelled padding", DT,
      "valid_ic = y != self.ignore_index if f.ic_mask_from_labeled else valid_u",
      "valid_ic = valid_u"),
    m("clean IC mask from the labelled GT", DT,
      "valid_ic = y != self.ignore_index if f.ic_mask_from_labeled else valid_u",
      "valid_ic = y != self.ignore_index"),
    m("IC normalised by confident pixels, not valid ones", "dualteacher/methods/losses.py",
      "(ce * (keep & valid)).sum() / valid.sum().clamp(min=1)",
      "(ce * (keep & valid)).sum() / (keep & valid).sum().clamp(min=1)"),
    # --- IC weight
    m("IC weight 0.2 dropped (weight 1)", DT,
      "loss = loss_x + loss_mix + self.dt.ic_weight * loss_ic",
      "loss = loss_x + loss_mix + loss_ic"),
    m("IC term dropped", DT,
      "loss = loss_x + loss_mix + self.dt.ic_weight * loss_ic", "loss = loss_x + loss_mix"),
    m("default ic_weight 0.2 -> 0.5", CFG, "ic_weight: float = 0.2", "ic_weight: float = 0.5"),
    # --- pairing
    m("teacher A with ClassMix, B with CutMix", DT, "        if k == 0:\n",
      "        if k == 1:\n"),
    m("teacher A always predicts", DT, "teacher = self.teachers[k]",
      "teacher = self.teachers[0]"),
    m("branch names swapped in the logs", DT, 'BRANCHES = ("cutmix", "classmix")',
      'BRANCHES = ("classmix", "cutmix")'),
    m("switching rule off by one epoch", DT, "return (epoch // switch_every) % 2",
      "return ((epoch + 1) // switch_every) % 2"),
    m("switching ignores switch_every", DT, "return (epoch // switch_every) % 2",
      "return epoch % 2"),
    # --- buffers (F11)
    m("faithful EMA averages BN buffers", DT,
      "EMA(BufferPolicy.keep if self.flags.ema_params_only else BufferPolicy.ema)",
      "EMA(BufferPolicy.ema)"),
    m("clean EMA leaves BN buffers", DT,
      "EMA(BufferPolicy.keep if self.flags.ema_params_only else BufferPolicy.ema)",
      "EMA(BufferPolicy.keep)"),
    m("clean EMA copies BN buffers", DT,
      "EMA(BufferPolicy.keep if self.flags.ema_params_only else BufferPolicy.ema)",
      "EMA(BufferPolicy.keep if self.flags.ema_params_only else BufferPolicy.copy)"),
    # --- F8 CutMix confidence
    m("faithful CutMix weight from mixed confidence", DT,
      "conf_w = conf if self.flags.cutmix_unmixed_conf else mix(box, conf[perm], conf)",
      "conf_w = mix(box, conf[perm], conf)"),
    m("clean CutMix weight from un-mixed confidence", DT,
      "conf_w = conf if self.flags.cutmix_unmixed_conf else mix(box, conf[perm], conf)",
      "conf_w = conf"),
    m("faithful confidence not quantised", DT,
      "img, ci = torch.floor(img * 255) / 255, torch.floor(ci * 255) / 255",
      "img, ci = torch.floor(img * 255) / 255, ci"),
    m("confidence rounded, not floored, to 8 bits", DT,
      "img, ci = torch.floor(img * 255) / 255, torch.floor(ci * 255) / 255",
      "img, ci = torch.floor(img * 255) / 255, torch.round(ci * 255) / 255"),
    m("faithful CutMix image not 8-bit after the jitter", DT,
      "            img = torch.round(img * 255) / 255\n", "            img = img\n"),
    m("clean quantises too", DT, "pil_8bit=official", "pil_8bit=True"),
    # --- joint flip
    m("flip leaves the pseudo-label", DT,
      "img, pli, ci = img.flip(-1), pli.flip(-1), ci.flip(-1)",
      "img, pli, ci = img.flip(-1), pli, ci.flip(-1)"),
    m("flip leaves the confidence", DT,
      "img, pli, ci = img.flip(-1), pli.flip(-1), ci.flip(-1)",
      "img, pli, ci = img.flip(-1), pli.flip(-1), ci"),
    m("no flip", DT, "img, pli, ci = img.flip(-1), pli.flip(-1), ci.flip(-1)",
      "img, pli, ci = img, pli, ci"),
    m("vertical flip", DT, "img, pli, ci = img.flip(-1), pli.flip(-1), ci.flip(-1)",
      "img, pli, ci = img.flip(-2), pli.flip(-2), ci.flip(-2)"),
    m("ReCo jitter p 0.5 instead of 0.8", DT, "if torch.rand(1) > 0.2:",
      "if torch.rand(1) > 0.5:"),
    m("ReCo blur always", DT,
      "if torch.rand(1) > 0.5:\n            sigma", "if True:\n            sigma"),
    m("ReCo blur sigma ~ U(0.1, 2.0)", DT, "uniform_(0.15, 1.15)", "uniform_(0.1, 2.0)"),
    m("ReCo jitter brightness (0.5, 1.5)", DT,
      "v2.ColorJitter((0.75, 1.25), (0.75, 1.25)", "v2.ColorJitter((0.5, 1.5), (0.75, 1.25)"),
    m("faithful strong view without greyscale", DT, "v2.RandomGrayscale(p=0.2)",
      "v2.RandomGrayscale(p=0.0)"),
    # --- weights and normalisation
    m("CutMix weight per batch, not per image", DT,
      "weight = confident.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)  # (B,)",
      "weight = (confident.sum() / valid.sum().clamp(min=1)).expand(len(conf_w))"),
    m("CutMix loss averaged over all pixels, not CE > 0", DT,
      "weighted = (weight.view(-1, 1, 1) * ce)[ce > 0]",
      "weighted = (weight.view(-1, 1, 1) * ce).flatten()"),
    m("CutMix weight over all pixels in clean", DT,
      "weight = confident.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)  # (B,)",
      "weight = confident.flatten(1).sum(1) / valid[0].numel()"),
    m("ClassMix weight per image, not per batch", DT,
      "weight = confident.sum() / valid.sum().clamp(min=1)  # one scalar for the batch",
      "weight = (confident.flatten(1).sum(1) / valid.flatten(1).sum(1)).view(-1, 1, 1)"),
    m("ClassMix loss mean over all pixels in clean (no renormalisation)", DT,
      "loss_mix = (weight * ce).sum() / valid.sum().clamp(min=1)",
      "loss_mix = (weight * ce).mean()"),
    m("ClassMix weight over all pixels in clean", DT,
      "weight = confident.sum() / valid.sum().clamp(min=1)  # one scalar for the batch",
      "weight = confident.sum() / valid.numel()"),
    # --- teacher init (F10)
    m("teachers initialised as copies of the student", DT,
      "self.teachers = nn.ModuleList([self.make_teacher(make_model) for _ in TEACHER_NAMES])",
      "self.teachers = nn.ModuleList([self.make_teacher(make_model) for _ in TEACHER_NAMES])\n"
      "        [t.load_state_dict(student.state_dict()) for t in self.teachers]"),
    m("every model built from the same seed", "dualteacher/methods/__init__.py",
      "    def make_model() -> SegModel:\n        return",
      "    def make_model() -> SegModel:\n        seed_all(cfg.train.seed)\n        return"),
    # --- strong view (F4)
    m("faithful strong view = weak view", DT, "x_s = BATCH_JITTER(x_u.clone())",
      "x_s = x_u.clone()"),
    m("faithful strong view = clamped weak view", DT, "x_s = BATCH_JITTER(x_u.clone())",
      "x_s = x_u.clone().clamp(0, 1)"),
    m("faithful strong view: greyscale p 0.2 -> 0.5", DT, "v2.RandomGrayscale(p=0.2)",
      "v2.RandomGrayscale(p=0.5)"),
    m("clean strong view = weak view", DT, 'x_s = batch_u["image_s"]', "x_s = x_u"),
    m("faithful jitter drawn per image", DT, "x_s = BATCH_JITTER(x_u.clone())",
      "x_s = torch.stack([BATCH_JITTER(v) for v in x_u])"),
    m("clean uses the batch jitter", DT, "if f.batch_jitter_strong_view:", "if True:"),
    m("data pipeline strong view = weak view", "dualteacher/data/base.py",
      "views[strong_key(i)] = self.norm(self.strong(image))",
      "views[strong_key(i)] = self.norm(image)", T_DATA),
    m("faithful asks the data for strong views", DT,
      "self.needs_strong_view = not self.flags.batch_jitter_strong_view",
      "self.needs_strong_view = True"),
    # --- CutMix box
    Mutation("lam drawn per image", MIX, [
        ("lam = float(torch.distributions.Beta(beta, beta).sample())",
         "lam = torch.distributions.Beta(beta, beta).sample((batch,))"),
        ("ratio = math.sqrt(1.0 - lam)", "ratio = (1.0 - lam).sqrt()"),
        ("cut_h, cut_w = int(height * ratio), int(width * ratio)",
         "cut_h, cut_w = (height * ratio).long(), (width * ratio).long()"),
    ], (T_MIX,)),
    m("lam ~ U(0, 1)", MIX, "Beta(beta, beta).sample()", "Beta(1.0, 1.0).sample()", T_MIX),
    m("lam ~ Beta(2, 2)", MIX, "Beta(beta, beta).sample()", "Beta(2.0, 2.0).sample()", T_MIX),
    m("default cutmix_beta 4 -> 2", CFG, "cutmix_beta: float = 4.0", "cutmix_beta: float = 2.0"),
    m("box centre in [0, H)", MIX, "cy = torch.randint(height // 8, height, (batch,))",
      "cy = torch.randint(0, height, (batch,))", T_MIX),
    m("box centre in [H/8, 7H/8)", MIX, "cx = torch.randint(width // 8, width, (batch,))",
      "cx = torch.randint(width // 8, width - width // 8, (batch,))", T_MIX),
    # --- supervised loss
    m("supervised loss trains on 255 as the last class", "dualteacher/methods/base.py",
      "return F.cross_entropy(logits_x, mask_x, ignore_index=self.ignore_index)",
      "return F.cross_entropy(logits_x, mask_x.clamp(max=logits_x.shape[1] - 1))"),
    m("supervised loss summed", "dualteacher/methods/base.py",
      "return F.cross_entropy(logits_x, mask_x, ignore_index=self.ignore_index)",
      "return F.cross_entropy(logits_x, mask_x, ignore_index=self.ignore_index, "
      "reduction='sum')"),
    # --- EMA: which teacher, which momentum (F1)
    m("the idle teacher is updated", DT,
      "self.ema.update(self.teachers[self.active(info)], self.student, momentum)",
      "self.ema.update(self.teachers[1 - self.active(info)], self.student, momentum)"),
    m("both teachers updated", DT,
      "self.ema.update(self.teachers[self.active(info)], self.student, momentum)",
      "[self.ema.update(t, self.student, momentum) for t in self.teachers]"),
    m("momentum cap hard-coded 0.999", EMA, "return min(1.0 - 1.0 / (i + 1), cap)",
      "return min(1.0 - 1.0 / (i + 1), 0.999)", T_EMA, T_DT),
    m("default cap 0.99 -> 0.999", CFG, "ema_momentum: float = 0.99",
      "ema_momentum: float = 0.999"),
    m("momentum warm-up off by one", EMA, "return min(1.0 - 1.0 / (i + 1), cap)",
      "return min(1.0 - 1.0 / (i + 2), cap)", T_EMA, T_DT),
    m("EMA index off by one", DT, "return step % (epoch_steps * switch_every) if restart",
      "return (step + 1) % (epoch_steps * switch_every) if restart"),
    m("EMA index restarts every epoch, not every shift", DT,
      "return step % (epoch_steps * switch_every) if restart",
      "return step % epoch_steps if restart"),
    m("ema_restart ignored", DT, "if restart else step", "if True else step"),
    m("EMA lerp the wrong way", EMA, "[p.detach() for p in s_params], 1.0 - momentum)",
      "[p.detach() for p in s_params], momentum)", T_EMA, T_DT),
    # --- second teacher forward (F12)
    m("faithful: no second teacher forward", DT, "if f.ic_second_teacher_forward:",
      "if False:"),
    m("clean: a second teacher forward", DT, "if f.ic_second_teacher_forward:", "if True:"),
    m("faithful: second forward run but not used", DT,
      "            conf, pl = self._predict(teacher, x_u, valid_u)\n",
      "            _ = self._predict(teacher, x_u, valid_u)\n"),
    # --- padding in the unsupervised terms (F13)
    m("clean counts the padding", DT, "if f.padding_in_unsup:", "if True:"),
    m("faithful excludes the padding", DT, "if f.padding_in_unsup:", "if False:"),
    m("clean: pseudo-labels not ignored on padding", DT,
      "return conf, pl.masked_fill(~valid, self.ignore_index)", "return conf, pl"),
    # --- ClassMix
    m("ClassMix mixes weak views", DT,
      "x, y, x_s, conf, pl, x_ic", "x, y, x_u, conf, pl, x_ic"),
    m("ClassMix pastes the image into itself", DT, "x_cm = mix(keep, x_s, x_s[perm])",
      "x_cm = mix(keep, x_s, x_s)"),
    m("ClassMix confidence not mixed", DT, "conf_cm = mix(keep, conf, conf[perm])",
      "conf_cm = conf"),
    m("ClassMix pseudo-label not mixed", DT, "pl_cm = mix(keep, pl, pl[perm])", "pl_cm = pl"),
    m("ClassMix pair not swapped", MIX, "return torch.tensor([1, 0], device=device)",
      "return torch.tensor([0, 1], device=device)", T_MIX, T_DT),
    m("ClassMix keeps half the classes rounded up", MIX, "[: n // 2]", "[: (n + 1) // 2]",
      T_MIX),
    # --- CutMix mixing
    m("CutMix image not taken from the partner", DT, "x_mix = mix(box, x_u[perm], x_u)",
      "x_mix = mix(box, x_u, x_u)"),
    m("CutMix pseudo-label not mixed", DT, "pl_mix = mix(box, pl[perm], pl)", "pl_mix = pl"),
    m("CutMix box inverted for the image", DT, "x_mix = mix(box, x_u[perm], x_u)",
      "x_mix = mix(~box, x_u[perm], x_u)"),
    m("CutMix partners fixed, not random", MIX,
      "    return torch.randperm(batch).to(device)\n\n\ndef classmix_partners",
      "    return torch.arange(batch).roll(1).to(device)\n\n\ndef classmix_partners", T_MIX),
    m("CutMix partner never the image itself", MIX,
      "    return torch.randperm(batch).to(device)\n\n\ndef classmix_partners",
      "    return partner_permutation(batch, device)\n\n\ndef classmix_partners", T_MIX),
    # --- threshold
    m("CutMix: conf > thresh", DT, "confident = (conf_w >= self.conf_thresh) & valid",
      "confident = (conf_w > self.conf_thresh) & valid"),
    m("ClassMix: conf > thresh", DT, "confident = (conf_cm >= self.conf_thresh) & valid",
      "confident = (conf_cm > self.conf_thresh) & valid"),
    m("IC: conf > thresh", DT, "conf >= self.conf_thresh, valid_ic",
      "conf > self.conf_thresh, valid_ic"),
    m("default conf_thresh 0.95 -> 0.9", CFG, "conf_thresh: float = 0.95",
      "conf_thresh: float = 0.9"),
    # --- weak-view padding (F14)
    m("official padding on the top/left", "dualteacher/data/transforms.py",
      "pad(x, (0, pw, 0, ph), value=fill)", "pad(x, (pw, 0, ph, 0), value=fill)", T_DATA),
    m("official padding with black (not normalised 0)", "dualteacher/data/base.py",
      "pad_bottom_right(v.as_subclass(torch.Tensor), self.crop_size, 0)",
      "pad_bottom_right(v.as_subclass(torch.Tensor), self.crop_size, -2.0)", T_DATA),
    m("faithful without the official padding", DT, "official_pad=official",
      "official_pad=False"),
    m("the run's loaders do not get the padding", "dualteacher/engine/run.py",
      "            official_pad=method.official_pad,\n", "", T_REC),
    # --- LR horizon, per-epoch validation (F16, F17)
    m("schedule_steps ignored", "dualteacher/engine/optim.py",
      "if cfg.schedule_steps is not None:\n        total_steps", "if False:\n        total_steps",
      T_REC),
    m("lr not held past the horizon", "dualteacher/engine/optim.py",
      "step = min(step, total_steps - 1)", "step = step", T_REC),
    m("eval_every_epochs ignored by the loop", "dualteacher/engine/trainer.py",
      "if done % eval_every == 0 or last:", "if done % cfg.train.eval_every == 0 or last:",
      T_REC),
    m("ADE20K config without the official horizon", "dualteacher/configs/ade20k_mitb1_512.yaml",
      "  schedule_steps: 50000", "  schedule_steps: null", T_REC),
    # --- configuration guard
    m("faithful accepts unequal batches", DT,
      "if self.flags.ic_mask_from_labeled and (", "if False and ("),
]
# fmt: on


def run(mutation: Mutation | None) -> list[str]:
    """Names of the failing tests with ``mutation`` applied to a copy of src/."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
        tests = (T_DT, T_MIX, T_EMA, T_DATA, T_REC)
        if mutation is not None:
            path = src / mutation.file
            text = path.read_text()
            for old, new in mutation.edits:
                if text.count(old) != 1:
                    raise SystemExit(f"{mutation.behaviour}: {old!r} occurs {text.count(old)}x")
                text = text.replace(old, new)
            path.write_text(text)
            tests = mutation.tests
        env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-rfE", "-p", "no:cacheprovider"]
        proc = subprocess.run(
            [*cmd, *tests], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
        if proc.returncode not in (0, 1) and not failed:
            failed = [f"(pytest exit {proc.returncode})"]
        return failed


def main(argv: list[str]) -> int:
    wanted = {int(a) for a in argv}
    baseline = run(None)
    if baseline:
        print("the unmutated tests fail:", *baseline, sep="\n  ")
        return 1
    print("| # | behaviour changed | file | tests that failed |")
    print("|---|---|---|---|")
    survivors = 0
    for i, mutation in enumerate(MUTATIONS, 1):
        if wanted and i not in wanted:
            continue
        failed = run(mutation)
        survivors += not failed
        names = ", ".join(f"`{t.split('::', 1)[-1]}`" for t in failed[:4])
        more = f" (+{len(failed) - 4})" if len(failed) > 4 else ""
        file = mutation.file.removeprefix("dualteacher/")
        print(f"| {i} | {mutation.behaviour} | {file} | {names + more or '**none**'} |", flush=True)
    print(f"\n{survivors} mutation(s) survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
