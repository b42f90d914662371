"""What is learned: an objective turns a batch into a loss. One file + one line here."""

from types import ModuleType

from tunesmith.objectives import causal_lm, classify, image_classify

# Each objective module provides:
#   DESCRIPTION
#   load_data(cfg: RunConfig) -> data with .train/.validation/.test lists, .label_names, .report
#   load_model(cfg: RunConfig, data) -> LoadedModel
#   encode(examples, tokenizer, max_length) -> (items with .input_ids, {stat: count} worth reporting)
#   collate(items, pad_id, train=False, **options) -> batch (train: augment if configured);  count(batch) -> targets in it;  loss_sum(model, batch) -> summed loss
#   eval_sums(model, items, batch_size, pad_id, device, num_labels) -> tensors that add up across processes
#   metrics(sums) -> {name: value};  details(sums, label_names) -> extra summary.json facts
#   plots(details_by_split, label_names, plot_dir) -> None
# and may provide:
#   prepare_model(model) -> line to report or None: exact speed-ups, once the method and checkpointing are set
OBJECTIVES: dict[str, ModuleType] = {
    "classify": classify,
    "causal_lm": causal_lm,
    "image_classify": image_classify,
}

__all__ = ["OBJECTIVES"]
