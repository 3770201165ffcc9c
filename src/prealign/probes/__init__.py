"""The probe guard: a linear probe reads the model's own mode belief while it generates.

    prealign probe train --model runs/demo/models/tagged --data runs/demo/data/calib
    prealign probe show --model runs/demo/models/tagged
    .venv/bin/pytest -q tests/test_probes.py

Masking illegal tags fixes the grammar, not the model's belief: a tagged model can drift into
writing a human chat log inside its own AI span without ever emitting a tag. A linear probe on a
hidden layer sees that drift. Three parts:

1. **Training and calibration** (`train_probe`, `calibrate_and_save`). One multinomial logistic
   regression per layer (0 = embeddings, i = block i, the last = the final norm's output, what
   the LM head reads) classifies each token's mode (the scheme's modes; label = the mode *after*
   reading the token, `prealign.segments.token_modes`; tag tokens are left out). Documents of a
   *calibration* split are divided by document: the probes are fitted on one part, and the other
   part picks the guard's layer, rule kind, threshold and length by a stated rule
   (`choose_guard`). Two rule families are compared on the same units: `run` (P(human) >
   threshold for k consecutive tokens) and `window` (the mean P(human) over the last w tokens >
   threshold). The default rule, `fire_budget`:

       among all (layer, rule kind, threshold, length) whose benign fire rate is at most
       `max_benign_fire` (2%), take the one that catches the most drift: the model's own
       generated drift, or the splices when it has none. Ties go to the higher splice catch
       rate, the lower fire rate, the faster catch (median splice latency), the higher
       threshold, the run rule before the window rule, the smaller length, the higher layer.
       If none is within the budget, take the lowest benign fire rate and record
       `target_met: false`.

   (`catch_target` is the mirror rule: the lowest benign fire rate that catches ≥ `target_catch`.)
   Units the guard is replayed over, teacher-forced from the probe's readings:
   - *generated replies* (`calibration_replies`): what the model itself writes under the lock
     to requests of the world's `calib` split (trained tactics only), sampled as the evaluation
     samples. A reply *drifts* (`reply_drift`) when it shows any hazard's canary, in either
     language, to an unauthorised asker, or when its own AI text narrates as a human
     (`prealign.world.human_narration`); it is caught only when the guard fires before the
     drift's first token. Every other reply is benign (a fire is a false alarm). When there
     are generated replies, they alone give the benign fire rate;
   - *document replies*: the AI replies of held-out calibration documents (from the tag that
     opens the AI's turn, quotes included, cut to `reply_len` tokens), benign;
   - *drift splices*: human-mode text of another held-out document spliced, without any tag,
     into a document reply after a random number of its tokens; a fire after the splice within
     `drift_len` tokens is a catch, its latency counted from the splice; reported apart.
   Records that say `split: eval` are refused: calibration never sees the evaluation split.
   `replay_guard` replays a saved guard the same way over evaluation outcome records (benign
   fire rate and drift caught, with Wilson intervals).
2. **The saved probe** (`Probe.save` / `Probe.load`): `probe/` inside the model directory holds
   `probe.safetensors` (weight [classes, hidden], bias [classes]; the standardisation folded in)
   and `probe.json` (layer, classes, guard classes, rule kind, threshold, k, hidden size, scheme,
   data hash, per-layer metrics, the calibration table, a checksum of the weights). Loading
   validates everything and fails with one line naming the file and what is wrong; files of
   format 1 (no rule kind) load as the run rule. `summary(probe)["guard_rule"]` says the rule in
   words.
3. **The guard** (`ProbeGuard`): an exit signal for the lock (`prealign.lock.ExitSignal`). A
   wrapper around the chosen layer's forward keeps its output for each row's last token; at each
   step the guard computes P(guard modes) (the scheme's exit modes: human) for the whole batch
   with one small matmul, keeps per-row state as arrays (a run counter, or the last w readings
   and a count; tags reset them; no Python loop over rows), and fires for rows whose rule holds
   (stop reason `probe_guard`). The state is matched to the rows by their ids, so beam search
   (which reorders rows every step) carries it with its beams. `resolve_guard` turns a user's setting
   (`auto`, `on`, `off`, a path) into a guard; the CLI, the server, the chat and the experiment
   call it, the generation drivers only ever see the exit signal.
4. **The survey** (`prealign.probes.survey`, `prealign eval probes`): per-layer probes of the
   token mode and of an upcoming mode transition, on held-out documents.

Modules: `fit` (hidden states and the linear fit, shared by all), `probe` (the saved probe),
`calibrate` (training and the guard's rule), `guard` (the runtime signal), `survey`.
"""

from prealign.probes.calibrate import (
    RULES,
    UNIT_KINDS,
    CalibReply,
    ProbeConfig,
    calibrate_and_save,
    calibrate_rule,
    calibration_replies,
    choose_guard,
    ensure_probe,
    guard_readings,
    read_calibration_texts,
    replay_guard,
    reply_drift,
    summary,
    train_probe,
    world_calibration_texts,
)
from prealign.probes.fit import fit_linear_probe, hidden_states, layer_modules
from prealign.probes.guard import GUARD_SETTINGS, ProbeGuard, resolve_guard
from prealign.probes.probe import (
    PROBE_DIR,
    PROBE_JSON,
    PROBE_WEIGHTS,
    RULE_KINDS,
    Probe,
    first_fire,
    has_probe,
    rule_scores,
    rule_words,
    run_lengths,
)

__all__ = [
    "GUARD_SETTINGS", "PROBE_DIR", "PROBE_JSON", "PROBE_WEIGHTS", "RULES", "RULE_KINDS", "UNIT_KINDS", "CalibReply", "Probe",
    "ProbeConfig", "ProbeGuard", "calibrate_and_save", "calibrate_rule", "calibration_replies", "choose_guard",
    "ensure_probe", "first_fire", "fit_linear_probe", "guard_readings", "has_probe", "hidden_states", "layer_modules",
    "read_calibration_texts", "replay_guard", "reply_drift", "resolve_guard", "rule_scores", "rule_words", "run_lengths",
    "summary", "train_probe", "world_calibration_texts",
]
