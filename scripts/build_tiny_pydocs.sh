#!/usr/bin/env bash
# Rebuild the tiny-pydocs models from scratch: corpus, tokenizer, MDLM pre-training, evaluator,
# then the conversion stages. See docs/tiny-pydocs.md for sizes, timings and results.
#
# Usage: scripts/build_tiny_pydocs.sh [STAGE...]
#   Stages, in order: corpus pretrain evaluator convert adapt consistency examples sweep (default: all).
# Environment:
#   RUNS     folder for the corpus, checkpoints, logs and models (default: runs/tiny-pydocs)
#   SOURCE   documentation sources (default: /usr/share/doc/python3.11/html/_sources,
#            from Debian's python3.11-doc package: apt-get install python3.11-doc)
#   THREADS  torch CPU threads per training job (default: 1)
#   PRETRAIN_MINUTES, EVALUATOR_MINUTES  wall-clock budgets of the two training runs
#            (default 70 and 35: each run ends at its step limit or its budget, whichever comes
#            first, with a fully decayed learning rate)
# Re-running a training stage resumes from its checkpoint.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-$REPO/runs/tiny-pydocs}"
SOURCE="${SOURCE:-/usr/share/doc/python3.11/html/_sources}"
THREADS="${THREADS:-1}"
PRETRAIN_MINUTES="${PRETRAIN_MINUTES:-70}"
EVALUATOR_MINUTES="${EVALUATOR_MINUTES:-35}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
PYTHON=(nice -n 10 python)
STAGES=("${@:-corpus pretrain evaluator convert adapt consistency examples sweep}")
STAGES=(${STAGES[*]})

wants() {
    local stage
    for stage in "${STAGES[@]}"; do [[ "$stage" == "$1" ]] && return 0; done
    return 1
}

resume_flag() {
    [[ -f "$1/checkpoint.pt" ]] && echo "--resume" || true
}

mkdir -p "$RUNS"

# 1-2. Corpus and tokenizer: about 6.7 MB of prose from the Python 3.11 documentation, split by
# document (5 % validation, 2 % held out), and a byte-level BPE tokenizer of 4096 tokens.
if wants corpus; then
    if [[ ! -d "$SOURCE" ]]; then
        echo "error: documentation sources not found at $SOURCE; run 'apt-get install python3.11-doc' or set SOURCE to a folder of .rst/.md/.txt files" >&2
        exit 1
    fi
    "${PYTHON[@]}" "$REPO/scripts/prepare_corpus.py" --source "$SOURCE" --output "$RUNS/corpus" \
        --tokenizer-output "$RUNS/tokenizer" --vocab-size 4096 --validation-fraction 0.05 --heldout-fraction 0.02 --seed 0 --overwrite
fi

# 3. MDLM pre-training: mdlm-owt architecture, 12 blocks, hidden 192, 3 heads, cond_dim 128,
# sequence length 128, batch 16, AdamW (peak 1e-3, 100 warm-up steps, cosine to 1e-4), at most
# 3000 steps or PRETRAIN_MINUTES. The final model is saved in the mdlm-owt layout, fp16.
if wants pretrain; then
    mkdir -p "$RUNS/pretrain"
    "${PYTHON[@]}" "$REPO/scripts/pretrain_mdlm.py" --corpus "$RUNS/corpus" --tokenizer "$RUNS/tokenizer" \
        --output "$RUNS/pretrain" --save-to "$RUNS/mdlm" --threads "$THREADS" \
        --hidden-dim 192 --n-heads 3 --n-blocks 12 --cond-dim 128 --seq-len 128 --dropout 0.1 \
        --batch-size 16 --max-steps 3000 --time-budget-minutes "$PRETRAIN_MINUTES" --warmup-steps 100 --lr 1e-3 \
        --eval-every 200 --eval-sequences 128 --eval-repeats 2 --save-dtype fp16 $(resume_flag "$RUNS/pretrain")
fi

# 4. Evaluator for generative perplexity: GPT-2 with 4 layers, hidden 192, 3 heads, context 256,
# batch 16, at most 1500 steps or EVALUATOR_MINUTES, saved in fp16 with the tokenizer.
if wants evaluator; then
    mkdir -p "$RUNS/evaluator-run"
    "${PYTHON[@]}" "$REPO/scripts/train_evaluator.py" --corpus "$RUNS/corpus" --tokenizer "$RUNS/tokenizer" \
        --output "$RUNS/evaluator-run" --save-to "$RUNS/evaluator" --threads "$THREADS" \
        --n-layer 4 --n-embd 192 --n-head 3 --context 256 --dropout 0.1 \
        --batch-size 16 --max-steps 1500 --time-budget-minutes "$EVALUATOR_MINUTES" --warmup-steps 50 --lr 1e-3 \
        --eval-every 200 --save-dtype fp16 $(resume_flag "$RUNS/evaluator-run")
fi

# 5. Conversion with the mapping of arXiv 2605.31215 (pre 0 | fixed point 5 | post 11), and the
# CKA analysis with the automatic plan it proposes, for comparison.
MGM2FP=("${PYTHON[@]}" -m mgm2fp)
if wants convert; then
    "${MGM2FP[@]}" convert "$RUNS/mdlm" --pre-layers 0 --fixed-point-layers 5 --post-layers 11 --output "$RUNS/converted" --overwrite
    "${MGM2FP[@]}" analyze "$RUNS/mdlm" --data "$RUNS/corpus/validation.txt" --num-sequences 32 --output "$RUNS/analysis"
    "${MGM2FP[@]}" convert "$RUNS/mdlm" --layer-plan "$RUNS/analysis/plan.json" --output "$RUNS/converted-auto" --overwrite
fi

# 6. Adaptation with the frozen source as teacher (recipes/tiny-pydocs-adapt.yaml), for both plans.
# ADAPT_STEPS changes the length of the run (the recipe's 200 steps by default).
ADAPT_STEPS="${ADAPT_STEPS:-200}"
if wants adapt; then
    for plan in "" "-auto"; do
        resume=()
        [[ -d "$RUNS/adapted$plan/checkpoints" ]] && resume=(--resume)
        OMP_NUM_THREADS="$THREADS" "${MGM2FP[@]}" finetune "$RUNS/converted$plan" --recipe "$REPO/recipes/tiny-pydocs-adapt.yaml" \
            --data "$RUNS/corpus/train.txt" --teacher "$RUNS/mdlm" --max-steps "$ADAPT_STEPS" --output "$RUNS/adapted$plan" "${resume[@]}"
    done
fi

# 7. Consistency post-training of the adapted paper-mapping model (recipes/tiny-pydocs-consistency.yaml).
CONSISTENCY_STEPS="${CONSISTENCY_STEPS:-60}"
if wants consistency; then
    resume=()
    [[ -d "$RUNS/cofre/checkpoints" ]] && resume=(--resume)
    OMP_NUM_THREADS="$THREADS" "${MGM2FP[@]}" finetune "$RUNS/adapted" --recipe "$REPO/recipes/tiny-pydocs-consistency.yaml" \
        --data "$RUNS/corpus/train.txt" --max-steps "$CONSISTENCY_STEPS" --output "$RUNS/cofre" "${resume[@]}"
fi

# 8. The bundled models: the source MDLM, CoFRe and the evaluator in half precision, with their
# tokenizers, plus a held-out text sample (at most 32 MB in all).
if wants examples; then
    "${PYTHON[@]}" "$REPO/scripts/bundle_tiny_pydocs.py" --runs "$RUNS" --output "$REPO/examples/tiny-pydocs" --num-iterations 2
fi

# 9. The budget sweep: benchmarks/results/tiny-pydocs-sweep.{json,md,png}.
if wants sweep; then
    "${PYTHON[@]}" "$REPO/benchmarks/sweep_tiny_pydocs.py" --runs "$RUNS" --threads "$THREADS" --num-samples 16 --num-iterations 2
fi
