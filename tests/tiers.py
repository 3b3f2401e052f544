"""The suite's tiers: the tests marked `slow` (run by `make test`, the CI tier; skipped by
`make test-fast`, the in-process tier that runs in a few minutes). A test is slow for one of three
reasons, each a table here so `make test-fast` is explained in one place:

- SLOW: a larger variant of a cheaper test (another layout, another parametrization, a subprocess per
  case), with that cheaper test named as its cover (tests/test_tiers.py: the cover exists and is not
  in SLOW itself);
- DECORATED: marked `@pytest.mark.slow` in its file (whole-recipe runs, multi-"node" rehearsals),
  with the test that checks its parts;
- HEAVY: measured: starts processes, trains or builds checkpoints, taking seconds to a minute each.

Keys are `file::test function` (every parametrization of it), `file::test function[id]` (that
one) or, in HEAVY, `file` (all its tests); SLOW and DECORATED values name the cover as `file::test function`, then what it covers.
"""

SLOW: dict[str, str] = {
    # torchrun trainings at each layout: the fast tier keeps TP=1 and TP=2 end to end, and every layout
    # in one spawn (the same weights and the same training steps at TP / SP / PP / VPP / DP)
    "test_trainer.py::test_parallel_layouts_give_the_tp1_loss_curve[tp2_sp]":
        "test_parallel.py::test_training_steps_agree_across_tp_pp_dp: SP's losses equal DP=2's, step by step",
    "test_trainer.py::test_parallel_layouts_give_the_tp1_loss_curve[pp2]":
        "test_parallel.py::test_training_steps_agree_across_tp_pp_dp: PP's losses equal DP=2's, step by step",
    "test_trainer.py::test_parallel_layouts_give_the_tp1_loss_curve[dp2_distopt]":
        "test_parallel.py::test_training_steps_agree_across_tp_pp_dp: DP / distributed optimizer losses",
    "test_trainer.py::test_resharding_on_resume_gives_the_same_next_loss[pp2-2-resume_flags2]":
        "test_trainer.py::test_resharding_on_resume_gives_the_same_next_loss: TP=2 -> 1 and 1 -> TP=2 stay fast",
    "test_trainer.py::test_resharding_on_resume_gives_the_same_next_loss[dp2_distopt-2-resume_flags3]":
        "test_trainer.py::test_resharding_on_resume_gives_the_same_next_loss: TP=2 -> 1 and 1 -> TP=2 stay fast",
    # one subprocess per patch left out (the negative controls); the positive run stays fast
    "test_runtime.py::test_each_patch_is_needed":
        "test_runtime.py::test_all_patches_together_run_megatron_on_cpu: seed, DDP, a step and a checkpoint",
    "test_growth_parallel.py::test_every_operator_grows_alike_at_tp2_and_pp2":
        "test_growth_parallel.py::test_grown_model_keeps_the_logits_at_tp2_sp_pp2_and_vpp2: growth at TP=2/PP=2; "
        "test_growth_methods.py covers each operator at TP=1",
    "test_grow_checkpoint.py::test_training_continues_after_width_growth_at_pp2_and_round_trips":
        "test_grow_checkpoint.py::test_depth_growth_preserves_logits_and_the_next_loss: a grown checkpoint "
        "trains on with the old model's next loss; test_grow_checkpoint.py::test_width_growth_preserves_the_logits_"
        "and_reports_progress: the width-grown one's logits",
    "test_export_training.py::test_training_continues_from_an_imported_export":
        "test_export.py::test_round_trip_is_bitwise: the imported export is the checkpoint, bit for bit",
    "test_evaluation_backend.py::test_lm_eval_cli_wrapper_runs_the_flm_model":
        "test_evaluation_backend.py::test_flm_and_hf_backends_agree_per_request: the same lm-eval model class, "
        "in this process",
    "test_faults_resume.py::test_a_second_trainer_on_the_same_save_is_refused_before_it_trains":
        "test_faults_resume.py::test_the_lock_names_its_holder_and_knows_stale_from_live: the lock itself",
}

# Marked with @pytest.mark.slow in their files: end-to-end runs (the demo, the walk-through, multi-"node"
# rehearsals) whose parts are each tested fast; listed so `make test-fast` is explained in one place.
DECORATED: dict[str, str] = {
    "test_demo.py::test_recipe_in_miniature_runs_end_to_end":
        "test_grow_checkpoint.py::test_width_growth_preserves_the_logits_and_reports_progress, and each tool's own tests",
    "test_readme_walkthrough.py::test_readme_walkthrough_runs_as_written_at_tiny_scale":
        "test_readme_walkthrough.py::test_readme_blocks_parse_and_start_with_the_setup: the blocks' steps and paths",
    "test_async_save.py::test_async_save_resumes_exactly_like_a_synchronous_save":
        "test_async_save.py::test_a_kill_during_an_async_save_leaves_the_previous_checkpoint_and_no_writer: an async "
        "save published only when complete; test_trainer.py::test_resume_after_sigkill_matches_uninterrupted_run_"
        "bitwise: resume equality",
    "test_async_save.py::test_fully_parallel_save_at_dp2_reloads_to_the_same_losses":
        "test_trainer.py::test_resharding_on_resume_gives_the_same_next_loss: resume across layouts (partly: not "
        "the fully parallel save)",
    "test_async_save.py::test_a_failed_async_write_stops_the_run_and_keeps_the_previous_checkpoint":
        "test_async_save.py::test_a_kill_during_an_async_save_leaves_the_previous_checkpoint_and_no_writer: the "
        "previous checkpoint stays the latest (partly: a kill, not EFBIG)",
    "test_growth_methods_cli.py::test_grown_checkpoint_verifies_trains_resumes_and_exports":
        "test_growth_methods.py::test_clone_keeps_the_logits_exactly_in_float64: the operators in this process",
    "test_loss_spikes.py::test_a_spike_is_logged_with_its_sample_ids_then_rolled_back_and_skipped":
        "test_loss_spikes.py::test_the_detector_uses_a_running_median_of_finite_losses: the detector",
    "test_observability.py::test_mfu_per_rank_throughput_and_wandb":
        "test_trainer.py::test_tiny_flm_learns_from_the_bilingual_corpus: the log line's TFLOP/s and MFU by formula",
    "test_observability.py::test_real_wandb_offline_writes_a_run_without_a_network":
        "test_trainer.py::test_tiny_flm_learns_from_the_bilingual_corpus: the metrics it forwards (partly: no wandb)",
    "test_operations.py::test_two_nodes_on_localhost_give_the_losses_of_one_node":
        "test_operations.py::test_rehearsal_shape_of_every_stage: the launchers' node arguments",
    "test_operations.py::test_a_worker_killed_mid_run_restarts_by_itself_to_the_same_final_loss":
        "test_operations.py::test_a_dead_worker_restarts_the_job_up_to_max_restarts: the restart loop",
    "test_operations.py::test_sigterm_saves_and_every_node_exits_0":
        "test_faults_flags.py::test_sigterm_to_torchrun_leaves_the_workers_time_to_save: the stop and its grace",
    "test_operations.py::test_the_whole_recipe_rehearses_through_the_sbatch_script":
        "test_operations.py::test_sbatch_job_starts_one_launcher_per_node_from_slurms_variables",
    "test_serve.py::test_vllm_completions_equal_generate_greedy":
        "test_serve.py::test_fallback_completions_equal_generate_greedy: the same parity with the stdlib server",
    "test_watchdog.py::test_a_sigstopped_rank_is_named_with_stacks_and_the_run_exits_nonzero":
        "test_watchdog.py::test_watchdog_names_the_silent_rank_and_the_one_behind",
    "test_watchdog.py::test_the_step_time_spread_names_a_slow_rank_and_the_timeout_reaches_every_group":
        "test_watchdog.py::test_step_time_spread_names_the_slowest_and_fastest_rank",
    "test_xpos_long.py::test_core_attention_at_32k_positions_in_bf16":
        "test_xpos_long.py::test_first_block_is_the_old_scheme_bit_for_bit_and_later_blocks_stay_bounded",
    "test_entry_points.py::test_installed_commands_run_without_path_setup":
        "test_entry_points.py::test_every_tool_has_a_console_command_whose_main_exists: the commands and their mains",
    "test_xpos_long.py::test_export_32k_forward_and_64_step_cached_decode_in_bf16":
        "test_xpos_long.py::test_export_past_one_block_equals_one_fixed_center_in_float64",
}


# Measured heavy: each starts processes, trains or builds a checkpoint, seconds to a minute apiece (timed
# with pytest's durations on this 2-core machine). A whole file where its fixtures build checkpoints
# (marking one test would only move the cost to the next). The fast tier keeps the in-process tests,
# one multi-process parity test (test_parallel.py::test_same_weights_give_same_logits_at_every_layout),
# the docs and flag checks. A new test that trains or starts several processes belongs here.
HEAVY: tuple[str, ...] = (
    "test_async_save.py",
    "test_distributed_helpers.py",
    "test_evaluation_backend.py",
    "test_extending.py",
    "test_faults_checkpoint.py",
    "test_grow_checkpoint.py",
    "test_recipe_reports.py",
    "test_serve.py",
    "test_trainer.py",
    "test_cli_flags.py::test_a_new_config_field_is_a_flag_of_every_cli_that_uses_the_config",
    "test_data_datasets.py::test_builds_without_any_process_group",
    "test_data_datasets.py::test_under_torch_distributed_gloo",
    "test_data_sentences.py::test_bilingual_jsonl_is_split_per_document_by_default_and_counted",
    "test_data_sentences.py::test_cli_flags",
    "test_docs.py::test_controls_a_flag_the_tool_does_not_take_is_reported",
    "test_docs.py::test_every_flag_the_pages_name_is_one_a_tool_takes",
    "test_export.py::test_exported_logits_equal_the_training_model",
    "test_export.py::test_greedy_generate_equals_transformers_generate",
    "test_export.py::test_incremental_decoding_equals_the_full_forward",
    "test_export.py::test_tp_plan_with_transformers_tensor_parallel_loading",
    "test_fast_paths.py::test_fused_cross_entropy_is_bf16_rounded_reference",
    "test_fast_paths.py::test_megatron_fused_bias_gelu_is_flm_gelu",
    "test_fast_paths.py::test_model_with_gpu_fusions_equals_unfused",
    "test_faults_data.py::test_data_fault[stale_sidecar_gpt2_ids_tp2]",
    "test_faults_data.py::test_data_fault[tiny_valid_split_empty]",
    "test_faults_data.py::test_data_fault[vocab_mismatch_tp2]",
    "test_faults_flags.py::test_sigterm_to_torchrun_leaves_the_workers_time_to_save",
    "test_faults_resume.py::test_a_resume_that_changes_the_run_is_refused_in_one_line",
    "test_faults_resume.py::test_after_a_divergence_the_advice_resumes_the_last_healthy_weights",
    "test_faults_tools.py::test_a_failed_grow_verify_leaves_no_grown_checkpoint",
    "test_faults_tools.py::test_edited_export_code_is_not_run",
    "test_faults_tools.py::test_evaluate_reports_an_unknown_task_before_loading",
    "test_faults_tools.py::test_preprocess_lone_surrogate",
    "test_gpu_step.py::test_gpu_step_benchmark_tiny_cpu",
    "test_growth_parallel.py::test_grown_model_keeps_the_logits_at_tp2_sp_pp2_and_vpp2",
    "test_growth_training.py::test_loss_continues_across_growth_and_falls_while_masks_ramp",
    "test_mup_coord_check.py::test_mup_is_flat_and_standard_parametrisation_drifts",
    "test_mup_sweep.py::test_sweep_records_losses_and_resumes_without_redoing_finished_runs",
    "test_parallel.py::test_training_steps_agree_across_tp_pp_dp",
    "test_runtime.py::test_all_patches_together_run_megatron_on_cpu",
    "test_runtime.py::test_strict_no_op_when_cuda_is_available",
    "test_watchdog.py::test_exit_duration_saves_and_exits_zero",
    "test_xpos_long.py::test_export_past_one_block_equals_one_fixed_center_in_float64",
)
