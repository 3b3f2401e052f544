"""The suite's tiers: the tests marked `slow` (run by `make test`, the CI tier; skipped by
`make test-fast`), each with the fast test that keeps its behaviour covered in the fast tier.

Why a table and not decorators alone: a test goes slow only when something fast still checks what it
checks, and this is where that is written down, one row per test; tests/test_tiers.py holds every row
to it (the slow test and its fast cover exist; the cover is not slow itself). Decorated `slow` tests
(whole-recipe runs with nothing smaller to stand for them) are listed in DECORATED for the same check.

Keys are `file::test function` (every parametrization of it) or `file::test function[id]` (that
one); values name the fast cover as `file::test function`, then what it keeps covered.
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
