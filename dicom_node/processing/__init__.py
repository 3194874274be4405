"""Everything between "series complete" and "results handed to the sender".

In the order data flows:

- ``kinds``: ``SeriesKind`` (what a series is) and ``JobKind`` (what work it gets);
- ``classification``: a series' kind from its headers, with the configured ``[[classify]]`` rules;
- ``sources``: where a job's files come from (the node's store, or a folder);
- ``frames``: Enhanced MR (multi-frame) images as one header view per frame;
- ``load``: a series' (or a T2 stack's) files -> arrays and geometry (``T2Series``,
  ``PerfusionSeries``);
- ``stacks``: which T2 series of a study make one stack (one series per breath-hold,
  motion-corrected copies preferred);
- ``prebolus``: pairing a perfusion series with its study's pre-bolus series;
- ``t2``, ``perfusion``: the pipelines; ``steps``: what they share (timed steps, the
  outcome, encoding in the order that keeps both cores busy);
- ``step_processes``: the helper processes that run the whole-image fit, the drawing and
  the SR beside the job;
- ``delivery``: derived objects stored (Q/R serves them), the results folder, sending;
- ``processor``: ``Processor`` (classification, the handler per series kind, ``process``)
  and the node's ``job_handlers``.

Names are imported on first use (PEP 562): the pipelines pull in the engine and the
encoders, which a process that only classifies or stores does not need.
"""

from __future__ import annotations

from dicom_node.lazy_exports import lazy_exports

_EXPORTS = {
    "SeriesKind": "kinds", "JobKind": "kinds", "QUANTIFIED": "kinds",
    "Classification": "classification", "Rule": "classification", "classify": "classification",
    "is_own_result": "classification",
    "preparation_time_ms": "classification", "slice_key": "classification",
    "SeriesSource": "sources", "StoredSeries": "sources", "FolderSeries": "sources",
    "SeriesError": "load", "T2Series": "load", "PerfusionSeries": "load", "read_headers": "load",
    "load_t2_series": "load", "load_t2_stack": "load", "stack_uid": "load",
    "StackPlan": "stacks", "plan_t2_stacks": "stacks", "load_perfusion_series": "load", "frame_time_s": "load",
    "PreBolusSeries": "prebolus", "find_prebolus": "prebolus", "pair_prebolus": "prebolus",
    "process_t2": "t2", "process_perfusion": "perfusion", "Outcome": "steps",
    "StepProcesses": "step_processes",
    "Delivery": "delivery", "NodeDelivery": "delivery", "FolderDelivery": "delivery", "Destinations": "delivery",
    "store_derived": "delivery",
    "Processor": "processor", "PIPELINES": "processor", "job_handlers": "processor", "configured_rules": "processor",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
