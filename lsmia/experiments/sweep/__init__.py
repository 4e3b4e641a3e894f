"""``lsmia sweep``: an Optuna search for the best accuracy-privacy trade-off of label smoothing.

Each trial trains one target with a sampled smoothing factor and warm-up, attacks it with PPA and
evaluates the leakage. The prior, the evaluation model and the attribute predictor are the study's
(DVC outputs under ``run.out_dir``), trained once and shared by every trial; a missing one is an error
telling the user to build it: the sweep never trains them itself, so parallel workers cannot race to
write them and DVC stays their only owner. Every trial uses ``run.seed`` (initialisation, data order,
attack), so trials differ only in their smoothing. Outputs: ``out/sweep/<study>/trial_<n>/{target,attack}``.

Modes (``sweep.mode``):

- ``pareto``: two objectives, maximise the target's test accuracy and minimise attack acc@1.
- ``constrained``: minimise attack acc@1 subject to test accuracy >= ``sweep.min_test_acc`` (a trial
  constraint, ``Trial.set_constraint``: Optuna 5 deprecates the samplers' ``constraints_func``). Test
  accuracy is reported per epoch, so a trial that cannot reach the floor is pruned (see
  :class:`FloorPruner`), and a target that ends below the floor is not attacked at all.

Sampler (``sweep.sampler``), default ``tpe``: multivariate TPE (``group=True`` for the conditional
warm-up parameters). The search is low-dimensional (alpha, a schedule, two warm-up numbers) and each
trial trains and attacks a model, so the budget is tens of trials: TPE models the objectives after
``sweep.startup_trials`` random trials, whereas NSGA-II spends whole generations of
``population_size`` trials (Optuna's default 50) before selection does anything. ``grid`` searches
alpha only (evenly spaced points, one per trial, queued when the study is created; the schedule stays
as configured in ``target.smoothing``), ``random`` is the baseline, ``nsga2`` suits large budgets.

Search space: alpha in [alpha_low, alpha_high]; the schedule among ``sweep.schedules``; for a linear
ramp that applies (alpha < 0, or ``negative_only`` off) ``warmup_start`` in [warmup_start_low,
warmup_start_high] and ``warmup_fraction`` in [0, 1], with warmup_end = start + fraction * (1 - start),
so end >= start by construction. A linear ramp with start = end = 0 is a constant schedule, so the
default ``schedules: [linear]`` already covers constant smoothing.

Defenses (``sweep.defense`` / ``--defense``): ``ls`` (default) searches the smoothing as above; ``mid`` searches
MID's beta, ``bido`` BiDO's lambda_x and lambda_y (each log-uniform; the ranges of each defense's spec in
lsmia.defenses.registry, or ``sweep.defense_ranges``), ``tl`` the
number of trained last blocks (an integer), each with ``target.smoothing`` as configured; ``none`` searches
nothing and trains the undefended target (alpha 0; one trial is enough). A study keeps the defense it was created
with. Besides the trials table, the summary writes ``points.json`` (every completed trial as a model, read by
``lsmia compare-defenses``) and ``fronts.png``, the front drawn by lsmia.reporting.defense_comparison with the undefended model
marked: the study's own alpha 0 target at ``run.seed`` (``out/metrics/alpha0.0_seed<s>.json``) when it exists.

Storage: by default a journal file ``out/sweep/<study>/journal.log`` (several processes on this
machine; ``optuna-dashboard`` reads it); ``sweep.storage`` / ``--storage`` takes an RDB URL
(postgresql://, mysql://) or redis:// for workers on many machines. Re-running the same study resumes
it and runs only what is left of ``sweep.n_trials``, a total over every worker and every run. The budget is
stored in the study (user attr ``n_trials``, set by each ``lsmia sweep`` run): ``--worker`` processes on other
machines follow it, whatever their own ``sweep.n_trials``.

Budget: trials are drawn with ask/tell in our own loop, so the budget check and ``ask`` happen under one
lock: an flock in ``out/sweep/<study>/`` for the processes of one machine, plus, for workers on several
machines, the shared storage's own lock (a PostgreSQL advisory lock, a MySQL named lock, a Redis lock), so
the budget is exact over every machine. A trial counts once it starts; a trial failed because its worker was
lost and queued again does not count (its retry does). Each trial records the worker that ran it (user attr
``worker``, ``host:pid``).

Faults: a diverging target (DivergenceError) is a FAILED trial with user attr ``fail_reason``; the
study goes on. A running trial records a heartbeat every ``heartbeat_interval`` s; before drawing a trial, a
worker fails every RUNNING trial silent for ``grace_period`` s and queues its parameters again (at most
``max_retry`` times; system attrs ``failed_trial`` / ``retry_history``). With an RDB (PostgreSQL) this is
Optuna's own heartbeat (``RDBStorage(heartbeat_interval, grace_period, heartbeat_stale_trial_callback=
RetryHeartbeatStaleTrialCallback(max_retry))``, timed by the database's clock); Optuna has none for journal
storages (file, Redis), so lsmia does the same there with a trial system attr and its own retry. Ctrl-C fails the running trial, queues it again and
leaves the study resumable.

MLflow (through lsmia.tracking.client only): one parent run per study, its id stored as study user attr so
workers and resumed runs attach to it; one nested run per trial (its id in trial user attr
``mlflow_run_id``) with the trial's config, both objectives, per-epoch training metrics, the model and
the reconstructions. The summary (trials table, Pareto front PNG + HTML, recommendation) is written to
``out/sweep/<study>/`` and, with tracking, logged to the parent run.

Modules: ``space`` (objectives, search space, samplers, pruner), ``storage`` (storages, redaction, the budget lock,
creating or loading the study), ``heartbeat`` (lost workers: heartbeat, stale trials failed and retried, budget),
``trials`` (one trial), ``summary`` (the study's summary) and ``runner`` (``lsmia sweep`` and its workers); the tables,
figure and summary files are lsmia.reporting.sweep_tables. This package exports their public names.
"""

from __future__ import annotations

from lsmia.experiments.sweep.heartbeat import (
    HEARTBEAT_ATTR,
    Heartbeat,
    consumed_budget,
    enqueue_retry,
    fail_stale_trials,
)
from lsmia.experiments.sweep.runner import (
    reuse_hint,
    run_sweep,
    run_worker,
    run_workers,
    single_trial_without_search,
    worker_seed,
)
from lsmia.experiments.sweep.space import (
    CONSTRAINT,
    FloorPruner,
    defense_space,
    directions,
    grid_alphas,
    make_pruner,
    make_sampler,
    name_objectives,
    objective_names,
    search_space,
    set_floor_constraint,
    suggest_defense,
    suggest_smoothing,
    warmup_applies,
)
from lsmia.experiments.sweep.storage import (
    BUDGET_ATTR,
    PARENT_RUN_ATTR,
    STORAGE_LOCK_TIMEOUT_S,
    Log,
    both_signs,
    budget_lock,
    create_or_load_study,
    load_study,
    open_storage,
    optuna_heartbeat,
    redact,
)
from lsmia.experiments.sweep.summary import (
    IMPORTANCE_MIN_TRIALS,
    front_of,
    param_importances,
    summarize,
    write_importance_html,
    write_pareto_html,
)
from lsmia.experiments.sweep.trials import (
    STAGE,
    SharedModels,
    TrialContext,
    TrialLayout,
    TrialObserver,
    describe_trial,
    execute_trial,
    run_trial,
    shared_models,
    suggest_trial,
    trial_config,
)
from lsmia.paths import SweepPaths
from lsmia.reporting.sweep_tables import (
    DEFENSE_PARAMS,
    FAIL_REASON,
    SYMBOLS,
    SweepResult,
    no_recommendation,
    pareto_front,
    plot_pareto_png,
    point_metrics,
    points_record,
    recommend,
    scores_text,
    setting_text,
    smoothing_text,
    study_reference,
    summary_lines,
    trial_row,
    write_points,
    write_tables,
)

__all__ = [
    "BUDGET_ATTR",
    "CONSTRAINT",
    "DEFENSE_PARAMS",
    "FAIL_REASON",
    "HEARTBEAT_ATTR",
    "IMPORTANCE_MIN_TRIALS",
    "PARENT_RUN_ATTR",
    "STAGE",
    "STORAGE_LOCK_TIMEOUT_S",
    "SYMBOLS",
    "FloorPruner",
    "Heartbeat",
    "Log",
    "SharedModels",
    "SweepPaths",
    "SweepResult",
    "TrialContext",
    "TrialLayout",
    "TrialObserver",
    "both_signs",
    "budget_lock",
    "consumed_budget",
    "create_or_load_study",
    "defense_space",
    "describe_trial",
    "directions",
    "enqueue_retry",
    "execute_trial",
    "fail_stale_trials",
    "front_of",
    "grid_alphas",
    "load_study",
    "make_pruner",
    "make_sampler",
    "name_objectives",
    "no_recommendation",
    "objective_names",
    "open_storage",
    "optuna_heartbeat",
    "param_importances",
    "pareto_front",
    "plot_pareto_png",
    "point_metrics",
    "points_record",
    "recommend",
    "redact",
    "reuse_hint",
    "run_sweep",
    "run_trial",
    "run_worker",
    "run_workers",
    "scores_text",
    "search_space",
    "set_floor_constraint",
    "setting_text",
    "shared_models",
    "single_trial_without_search",
    "smoothing_text",
    "study_reference",
    "suggest_defense",
    "suggest_smoothing",
    "suggest_trial",
    "summarize",
    "summary_lines",
    "trial_config",
    "trial_row",
    "warmup_applies",
    "worker_seed",
    "write_importance_html",
    "write_pareto_html",
    "write_points",
    "write_tables",
]
