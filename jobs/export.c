/*
 * export.c — a stored plan as the configuration of the framework a team
 * trains with: Megatron-LM's command-line arguments, a DeepSpeed JSON
 * config, a torchtitan TOML job config.
 *
 * A plan is read for what the frameworks can say: the mesh (data, tensor,
 * pipeline and expert degrees), micro-batches and schedule, whether every
 * tensor-parallel split is the one Megatron-LM makes (checked against
 * strata's own Megatron-LM layout on the same mesh), recompute, ZeRO stage,
 * gradient compression, parameter servers and SFB, the model's precision.
 * What a framework cannot express is listed and the plan refused for it;
 * the closest plan it can express is then built, predicted beside the
 * original and stored, so that it can be exported instead.
 *
 * Names as found in the frameworks' sources:
 *   Megatron-LM core_v0.15.0 megatron/training/arguments.py
 *   DeepSpeed v0.19.5 docs/_pages/config-json.md, deepspeed/runtime/zero/config.py
 *   torchtitan v0.2.2 torchtitan/config/job_config.py (the last release with TOML files)
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "ir/util.h"

static const char *const TARGETS[] = { "megatron", "deepspeed", "torchtitan" };

int export_target_parse(const char *s, ExportTarget *t)
{
    for (int i = 0; i < 3; i++)
        if (s && !strcmp(s, TARGETS[i])) {
            *t = (ExportTarget)i;
            return 0;
        }
    return -1;
}

const char *export_target_name(ExportTarget t)
{
    return TARGETS[t];
}

static void add_line(char ***list, int *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_line(char ***list, int *n, const char *fmt, ...)
{
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    *list = xrealloc(*list, sizeof **list * (size_t)(*n + 1));
    (*list)[(*n)++] = xstrdup(buf);
}

/* ----------------------------------------------------------------------------
 * What a plan is, in the frameworks' terms */

typedef struct {
    int D, T, P, V, M, E;           /* data, tensor, pipeline, virtual, micro-batches, expert */
    bool E_in_data;                 /* the expert ranks are data ranks too (dp_ep), counted in D */
    int Q;                          /* context parallelism (dp_cp), not counted in D */
    int experts;                    /* per MoE layer (0: none) */
    uint64_t moe_layers;            /* bit b: layer b routes to experts */
    double capacity_factor;         /* capacity = factor x sequence / experts */
    int64_t B, mb;                  /* global batch; per data rank and micro-batch */
    bool recompute_all, recompute_any;
    Shard shard;                    /* of every param (shard_mixed: not one) */
    bool shard_mixed;
    Compress compress;
    bool compress_mixed;
    int nps, nsfb, nstale;          /* params by a parameter server, by SFB, stale */
    DType dtype;                    /* of the params */
    bool megatron_splits;           /* every tp split is Megatron-LM's */
    bool sequence_parallel;         /* ... with sequence parallelism */
    char split_why[300];            /* when not: the first op that differs */
    bool even_cuts;                 /* the blocks cut evenly over P x V chunks */
    int64_t layers, hidden, heads, ffn, seq, vocab;   /* transformer shape (0: unknown) */
    bool untied;                    /* the output layer has a weight of its own, not the
                                       embedding table's */
    double bucket_bytes;
} Reading;

static int letter_size(const Graph *g, char l)
{
    int64_t n = 0;
    for (int i = 0; i < g->nops; i++)
        if (g->ops[i].letters_mask >> (l - 'a') & 1u && g->ops[i].size[l - 'a'] > n)
            n = g->ops[i].size[l - 'a'];
    return (int)n;
}

/* Do the tensor-parallel splits of s equal those of ref (both on a tp axis)? */
static bool same_tp_splits(const Graph *g, const Strategy *s, const Strategy *ref, char *why,
                           int nwhy)
{
    int ta = strategy_axis(s, "tp"), tb = strategy_axis(ref, "tp");
    for (int i = 0; i < g->nops; i++)
        for (int l = 0; l < IR_LETTERS; l++) {
            bool a = ta >= 0 && (s->ops[i].split[l] >> ta & 1u);
            bool b = tb >= 0 && (ref->ops[i].split[l] >> tb & 1u);
            if (a != b) {
                snprintf(why, nwhy, "op %s %s letter %c over tp, Megatron-LM %s", g->ops[i].name,
                         a ? "splits" : "does not split", 'a' + l, a ? "does not" : "does");
                return false;
            }
        }
    return true;
}

/* The frameworks' data-parallel degree, world / (tensor x pipeline): the
 * expert ranks are part of it. */
static int data_degree(const Reading *rd)
{
    return rd->E_in_data ? rd->D : rd->D * rd->E;
}

/* s (a pp x dp x tp layout) with Q of its data ranks sharing out the
 * sequence instead (context parallelism, the frameworks' name for strata's
 * dp_cp axis): every op that holds the sequence and can split it splits
 * it over the new axis, and its batch over the other data ranks only. */
static Strategy *with_context(const Graph *g, const Cluster *c, Strategy *s, int Q, Err *err)
{
    /* the context axis goes after the data axis, else after the pipeline,
     * else first: outside tp, as the searcher lays out dp_cp */
    int seq = 's' - 'a', n = 0, cp = 0, map[MESH_MAX_AXES], dp = strategy_axis(s, "dp");
    int at = dp >= 0 ? dp + 1 : s->pp_axis >= 0 ? s->pp_axis + 1 : 0;
    const char *names[MESH_MAX_AXES];
    int sizes[MESH_MAX_AXES];
    for (int a = 0; a <= s->naxes; a++) {
        if (a == at) {
            cp = n;
            names[n] = "dp_cp";
            sizes[n++] = Q;
        }
        if (a == s->naxes) break;
        map[a] = n;
        names[n] = s->axis_name[a];
        sizes[n++] = s->axis_size[a];
    }
    Strategy *q = strategy_new(g, n, names, sizes, err);
    if (!q) return NULL;
    q->microbatches = s->microbatches;
    q->schedule = s->schedule;
    if (s->nchunks != q->nchunks) q->cuts = xrealloc(q->cuts, sizeof *q->cuts * s->nchunks);
    q->virtual_stages = s->virtual_stages;
    q->nchunks = s->nchunks;
    memcpy(q->cuts, s->cuts, sizeof *q->cuts * (s->nchunks > 1 ? s->nchunks - 1 : 0));
    q->optimizer = s->optimizer;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        for (int l = 0; l < IR_LETTERS; l++)
            for (int a = 0; a < s->naxes; a++)
                if (s->ops[i].split[l] >> a & 1u) q->ops[i].split[l] |= (AxisMask)(1u << map[a]);
        q->ops[i].recompute = s->ops[i].recompute;
        /* strategy_new splits the batch over every data axis, dp_cp too */
        if ((op->letters_mask >> seq & 1u) && seq != op->batch_letter &&
            strategy_letter_splittable(op, seq)) {
            q->ops[i].split[seq] |= (AxisMask)(1u << cp);
            if (op->batch_letter >= 0)
                q->ops[i].split[op->batch_letter] &= (AxisMask)~(1u << cp);
        }
    }
    memcpy(q->params, s->params, sizeof *q->params * g->ntensors);
    if (strategy_finish(q, g, c, err)) {
        strategy_free(q);
        return NULL;
    }
    strategy_canonicalize(q, g);    /* an id, for the store */
    return q;
}

/* strata's Megatron-LM layout on the plan's mesh (with its context
 * parallelism); zero > 0 shards every param so (Megatron-LM's distributed
 * optimizer is ZeRO-1, torchtitan's FSDP ZeRO-3). */
static Strategy *megatron_like(const Graph *g, const Cluster *c, const Reading *rd, bool seqpar,
                               int zero, Err *err)
{
    StrategyOpts o = { .world = data_degree(rd) * rd->T * rd->P, .tp = rd->T, .pp = rd->P,
                       .microbatches = rd->M, .virtual_stages = rd->V > 1 ? rd->V : 0,
                       .recompute = rd->recompute_any, .sequence_parallel = seqpar };
    cJSON *j = strategy_build("megatron", g, c, &o, err);
    Strategy *s = j ? strategy_from_json(j, g, c, err) : NULL;
    if (s && zero > 0) {
        /* every param sharded but those used on several stages (a tied
         * embedding, summed across them), which strata keeps whole */
        cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "params");
        if (!params) params = cJSON_AddObjectToObject(j, "params");
        char shard[16];
        snprintf(shard, sizeof shard, "zero%d", zero);
        cJSON_AddStringToObject(cJSON_AddObjectToObject(params, "*"), "shard", shard);
        for (int t = 0; t < g->ntensors; t++) {
            if (g->tensors[t].role != ROLE_PARAM) continue;
            int stage = -1;
            bool tied = false;
            for (int i = 0; i < g->nops && !tied; i++)
                for (int k = 0; k < g->ops[i].nin; k++)
                    if (g->ops[i].in[k] == t) {
                        tied |= stage >= 0 && s->op_stage[i] != stage;
                        stage = s->op_stage[i];
                    }
            if (tied) {
                cJSON_DeleteItemFromObjectCaseSensitive(params, g->tensors[t].name);
                cJSON_AddStringToObject(cJSON_AddObjectToObject(params, g->tensors[t].name),
                                        "shard", "none");
            }
        }
        strategy_free(s);
        s = strategy_from_json(j, g, c, err);
    }
    cJSON_Delete(j);
    if (s && rd->Q > 1) {
        Strategy *q = with_context(g, c, s, rd->Q, err);
        strategy_free(s);
        s = q;
    }
    return s;
}

static void read_plan(const Graph *g, const Cluster *c, const Strategy *s, Reading *rd,
                      char ***unmapped, int *nun)
{
    memset(rd, 0, sizeof *rd);
    rd->D = rd->T = rd->E = rd->Q = 1;
    rd->P = s->nstages;
    rd->V = s->virtual_stages > 0 ? s->virtual_stages : 1;
    rd->M = s->microbatches;
    for (int a = 0; a < s->naxes; a++) {
        const char *n = s->axis_name[a];
        if (s->data_axes >> a & 1u) {
            rd->D *= s->axis_size[a];
            /* the data ranks an expert layer's experts are spread over: the
             * frameworks' expert parallelism, carved out of data parallelism */
            if (!strcmp(n, "dp_ep")) {
                rd->E = s->axis_size[a];
                rd->E_in_data = true;
            }
            /* the data ranks a sequence is spread over: the frameworks'
             * context parallelism, counted apart from data parallelism */
            if (!strcmp(n, "dp_cp")) {
                rd->D /= s->axis_size[a];
                rd->Q = s->axis_size[a];
            }
        } else if (!strcmp(n, "tp")) rd->T = s->axis_size[a];
        else if (!strcmp(n, "ep")) rd->E = s->axis_size[a];
        else if (strcmp(n, "pp"))
            add_line(unmapped, nun, "mesh axis %s (size %d): the frameworks name data, tensor, "
                     "pipeline and expert axes only", n, s->axis_size[a]);
    }
    for (int i = 0; i < g->ntensors; i++)
        if (g->tensors[i].role == ROLE_INPUT && g->tensors[i].batch_dim >= 0) {
            rd->B = g->tensors[i].shape[g->tensors[i].batch_dim];
            break;
        }
    rd->mb = rd->D * rd->M > 0 ? rd->B / (rd->D * rd->M) : 0;
    /* recompute over the blocks' ops */
    int nblock_ops = 0, nrc = 0;
    for (int i = 0; i < g->nops; i++) {
        if (g->ops[i].block < 0) continue;
        nblock_ops++;
        nrc += s->ops[i].recompute;
    }
    rd->recompute_any = nrc > 0;
    rd->recompute_all = nblock_ops > 0 && nrc == nblock_ops;
    /* params; one used on several stages (a tied embedding) is kept whole by
     * strata whatever the others do, so its shard says nothing */
    int *stage = xmalloc(sizeof(int) * (size_t)(g->ntensors ? g->ntensors : 1));
    bool *tied = xcalloc((size_t)(g->ntensors ? g->ntensors : 1), sizeof *tied);
    for (int t = 0; t < g->ntensors; t++) stage[t] = -1;
    for (int o = 0; o < g->nops; o++)
        for (int k = 0; k < g->ops[o].nin; k++) {
            int t = g->ops[o].in[k];
            if (stage[t] >= 0 && stage[t] != s->op_stage[o]) tied[t] = true;
            stage[t] = s->op_stage[o];
        }
    bool first = true;
    for (int i = 0; i < g->ntensors; i++) {
        if (g->tensors[i].role != ROLE_PARAM) continue;
        const ParamPolicy *pp = &s->params[i];
        if (tied[i] && pp->shard == SHARD_NONE) {
            rd->nstale += pp->staleness > 0;
            rd->nps += pp->method == SYNC_PS;
            continue;
        }
        if (first) {
            rd->shard = pp->shard;
            rd->compress = pp->compress;
            rd->dtype = g->tensors[i].dtype;
            rd->bucket_bytes = pp->bucket_bytes;
            first = false;
        }
        rd->shard_mixed |= pp->shard != rd->shard;
        rd->compress_mixed |= pp->compress != rd->compress;
        rd->nps += pp->method == SYNC_PS;
        rd->nsfb += pp->method == SYNC_SFB;
        rd->nstale += pp->staleness > 0;
    }
    free(stage);
    free(tied);
    /* even cuts */
    rd->even_cuts = true;
    int nch = rd->P * rd->V;
    if (nch > 1 && g->nblocks % nch) rd->even_cuts = false;
    for (int k = 0; k + 1 < nch && rd->even_cuts; k++)
        if (s->cuts[k] != (int)((int64_t)(k + 1) * g->nblocks / nch)) rd->even_cuts = false;
    /* tensor-parallel splits against Megatron-LM's on the same mesh */
    rd->megatron_splits = true;
    if (rd->T > 1) {
        Err e = {0};
        Strategy *ref = megatron_like(g, c, rd, false, 0, &e);
        rd->megatron_splits = ref && same_tp_splits(g, s, ref, rd->split_why, sizeof rd->split_why);
        strategy_free(ref);
        if (!rd->megatron_splits) {
            ref = megatron_like(g, c, rd, true, 0, &e);
            char why[300];
            if (ref && same_tp_splits(g, s, ref, why, sizeof why)) {
                rd->megatron_splits = rd->sequence_parallel = true;
            } else if (e.msg[0] && !rd->split_why[0]) {
                snprintf(rd->split_why, sizeof rd->split_why, "%.290s", e.msg);
            }
            strategy_free(ref);
        }
    }
    /* a transformer's shape, where the model has one */
    if (letter_size(g, 'n') && letter_size(g, 'f') && letter_size(g, 'v')) {
        rd->layers = g->nblocks;
        rd->hidden = letter_size(g, 'h');
        rd->heads = letter_size(g, 'n');
        rd->ffn = letter_size(g, 'f');
        rd->seq = letter_size(g, 's');
        rd->vocab = letter_size(g, 'v');
        /* tied: the embedding table is read by another op too (the output
         * layer's matmul), as Megatron-LM ties them unless told */
        rd->untied = true;
        for (int t = 0; t < g->ntensors; t++)
            if (g->tensors[t].role == ROLE_PARAM && graph_read_by(g, t, OP_EMBEDDING) &&
                graph_read_by(g, t, OP_MATMUL))
                rd->untied = false;
        /* switch experts: which layers route, over how many experts, with what capacity */
        for (int i = 0; i < g->nops; i++) {
            const Op *op = &g->ops[i];
            if (op->kind != OP_ROUTE || !op->reduce_mask || op->block < 0 || op->block >= 64)
                continue;
            int e = __builtin_ctz(op->reduce_mask);
            rd->experts = (int)op->size[e];
            rd->moe_layers |= 1ull << op->block;
            /* the capacity letter: the output's one the input lacks */
            for (const char *l = op->out_letters; *l; l++)
                if (!strchr(op->in_letters[0], *l) && rd->seq)
                    rd->capacity_factor = (double)op->size[*l - 'a'] * rd->experts / (double)rd->seq;
        }
    }
}

/* What every framework lacks. */
static void common_gaps(const Reading *rd, char ***un, int *n)
{
    if (rd->nps) add_line(un, n, "%d param(s) synchronised through a parameter server", rd->nps);
    if (rd->nsfb) add_line(un, n, "%d param(s) synchronised by sufficient-factor broadcast", rd->nsfb);
    if (rd->nstale) add_line(un, n, "%d param(s) with stale (asynchronous) updates", rd->nstale);
    if (!rd->megatron_splits)
        add_line(un, n, "per-layer tensor-parallel splits other than Megatron-LM's (%s)",
                 rd->split_why);
    if (rd->recompute_any && !rd->recompute_all)
        add_line(un, n, "recomputation of some blocks' ops but not all");
    if (rd->shard_mixed) add_line(un, n, "ZeRO stages that differ between params");
    if (rd->compress_mixed) add_line(un, n, "gradient compression that differs between params");
}

/* ----------------------------------------------------------------------------
 * The three formats */

static char *megatron_args(const Reading *rd, const LoadedPlan *lp, char ***un, int *nun,
                           char ***notes, int *nn)
{
    common_gaps(rd, un, nun);
    if (lp->s->schedule == SCHED_GPIPE && rd->P > 1)
        add_line(un, nun, "the GPipe schedule (Megatron-LM runs 1F1B, or interleaved 1F1B)");
    if (!rd->even_cuts)
        add_line(un, nun, "pipeline cuts other than an even split of the %d layers", lp->g->nblocks);
    if (rd->compress != COMPRESS_NONE)
        add_line(un, nun, "gradient compression %s", compress_name(rd->compress));
    if (rd->shard == SHARD_ZERO2 || rd->shard == SHARD_ZERO3)
        add_line(notes, nn, "ZeRO-%d maps to Megatron-FSDP (--use-megatron-fsdp), not the "
                 "distributed optimizer", rd->shard);
    char **fl = NULL;
    int nf = 0;
    add_line(&fl, &nf, "--tensor-model-parallel-size %d", rd->T);
    add_line(&fl, &nf, "--pipeline-model-parallel-size %d", rd->P);
    if (rd->V > 1 && rd->layers)
        add_line(&fl, &nf, "--num-layers-per-virtual-pipeline-stage %lld",
                 (long long)(rd->layers / (rd->P * rd->V)));
    if (rd->E > 1) add_line(&fl, &nf, "--expert-model-parallel-size %d", rd->E);
    if (rd->Q > 1) add_line(&fl, &nf, "--context-parallel-size %d", rd->Q);
    add_line(&fl, &nf, "--micro-batch-size %lld", (long long)rd->mb);
    add_line(&fl, &nf, "--global-batch-size %lld", (long long)rd->B);
    if (rd->recompute_all) {
        add_line(&fl, &nf, "--recompute-granularity full");
        add_line(&fl, &nf, "--recompute-method uniform");
        add_line(&fl, &nf, "--recompute-num-layers 1");
    }
    if (rd->sequence_parallel) add_line(&fl, &nf, "--sequence-parallel");
    if (rd->shard == SHARD_ZERO1) add_line(&fl, &nf, "--use-distributed-optimizer");
    if (rd->shard == SHARD_ZERO2 || rd->shard == SHARD_ZERO3) {
        add_line(&fl, &nf, "--use-megatron-fsdp");
        add_line(&fl, &nf, "--data-parallel-sharding-strategy %s",
                 rd->shard == SHARD_ZERO2 ? "optim_grads" : "optim_grads_params");
    }
    if (rd->D > 1) add_line(&fl, &nf, "--overlap-grad-reduce");
    if (rd->dtype == DT_BF16) add_line(&fl, &nf, "--bf16");
    if (rd->dtype == DT_F16) add_line(&fl, &nf, "--fp16");
    if (rd->dtype != DT_F32) add_line(&fl, &nf, "--accumulate-allreduce-grads-in-fp32");
    if (lp->s->optimizer == OPT_SGD) add_line(&fl, &nf, "--optimizer sgd");
    if (rd->layers) {
        add_line(&fl, &nf, "--num-layers %lld", (long long)rd->layers);
        add_line(&fl, &nf, "--hidden-size %lld", (long long)rd->hidden);
        add_line(&fl, &nf, "--num-attention-heads %lld", (long long)rd->heads);
        add_line(&fl, &nf, "--ffn-hidden-size %lld", (long long)rd->ffn);
        add_line(&fl, &nf, "--seq-length %lld", (long long)rd->seq);
        add_line(&fl, &nf, "--max-position-embeddings %lld", (long long)rd->seq);
        add_line(&fl, &nf, "--padded-vocab-size %lld", (long long)rd->vocab);
        if (rd->untied) add_line(&fl, &nf, "--untie-embeddings-and-output-weights");
        if (rd->experts) {
            /* top-1 routing to capacity slots, as Switch Transformer; the
             * MoE layers as a list (Megatron-LM's integer N puts them at
             * 0, N, 2N, ...) */
            char freq[200] = "[";
            for (int b = 0; b < rd->layers && b < 64 && strlen(freq) < sizeof freq - 4; b++)
                strcat(freq, rd->moe_layers >> b & 1u ? (b ? ",1" : "1") : (b ? ",0" : "0"));
            strcat(freq, "]");
            add_line(&fl, &nf, "--num-experts %d", rd->experts);
            add_line(&fl, &nf, "--moe-layer-freq '%s'", freq);
            add_line(&fl, &nf, "--moe-router-topk 1");
            if (rd->capacity_factor > 0)
                add_line(&fl, &nf, "--moe-expert-capacity-factor %g", rd->capacity_factor);
        }
    } else {
        add_line(notes, nn, "the model is not a transformer Megatron-LM builds: its layers are "
                 "yours to define");
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, "# Megatron-LM arguments for plan %s: %s on %d x %s\n", lp->row.id,
            lp->row.model_name, lp->row.world, lp->row.cluster_name);
    fprintf(f, "# (names as in Megatron-LM core_v0.15.0, megatron/training/arguments.py; data "
               "parallel = world / (tensor x pipeline%s) = %d)\n", rd->Q > 1 ? " x context" : "",
            data_degree(rd));
    for (int i = 0; i < nf; i++) {
        fprintf(f, "%s%s\n", fl[i], i + 1 < nf ? " \\" : "");
        free(fl[i]);
    }
    free(fl);
    fclose(f);
    return text;
}

static char *deepspeed_config(const Reading *rd, const LoadedPlan *lp, char ***un, int *nun,
                              char ***notes, int *nn)
{
    common_gaps(rd, un, nun);
    if (rd->T > 1)
        add_line(un, nun, "tensor parallelism of degree %d (a DeepSpeed config has none; "
                 "Megatron-DeepSpeed sets it in code)", rd->T);
    if (rd->E > 1) add_line(un, nun, "expert parallelism of degree %d", rd->E);
    if (rd->Q > 1) add_line(un, nun, "context (sequence) parallelism of degree %d", rd->Q);
    if (rd->P > 1 && lp->s->schedule != SCHED_1F1B)
        add_line(un, nun, "the %s schedule (DeepSpeed's pipeline engine runs 1F1B)",
                 schedule_name(lp->s->schedule));
    if (rd->compress == COMPRESS_INT8 || rd->compress == COMPRESS_POWERSGD)
        add_line(un, nun, "gradient compression %s", compress_name(rd->compress));
    if (rd->P > 1) {
        add_line(notes, nn, "pipeline parallelism is set in code: PipelineModule(layers, "
                 "num_stages=%d, partition_method='%s')", rd->P,
                 rd->even_cuts ? "uniform" : "parameters");
        if (!rd->even_cuts) add_line(notes, nn, "strata's cuts are not an even split; "
                                     "'parameters' balances by parameter count instead");
    }
    if (rd->shard != SHARD_NONE && rd->P > 1)
        add_line(un, nun, "ZeRO-%d with pipeline parallelism (DeepSpeed's pipeline engine "
                 "takes ZeRO-1 at most)", rd->shard);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "train_batch_size", (double)rd->B);
    cJSON_AddNumberToObject(j, "train_micro_batch_size_per_gpu", (double)rd->mb);
    cJSON_AddNumberToObject(j, "gradient_accumulation_steps", rd->M);
    if (rd->dtype == DT_BF16) cJSON_AddBoolToObject(cJSON_AddObjectToObject(j, "bf16"), "enabled", 1);
    if (rd->dtype == DT_F16) {
        cJSON *fp = cJSON_AddObjectToObject(j, "fp16");
        cJSON_AddBoolToObject(fp, "enabled", 1);
        cJSON_AddNumberToObject(fp, "loss_scale", 0);
    }
    if (rd->compress == COMPRESS_FP16) cJSON_AddStringToObject(j, "communication_data_type", "fp16");
    cJSON *z = cJSON_AddObjectToObject(j, "zero_optimization");
    double bucket = rd->bucket_bytes > 0 ? rd->bucket_bytes : 5e8;
    cJSON_AddNumberToObject(z, "stage", rd->shard);
    if (rd->shard != SHARD_NONE) {
        cJSON_AddBoolToObject(z, "overlap_comm", 1);
        cJSON_AddBoolToObject(z, "contiguous_gradients", 1);
        cJSON_AddNumberToObject(z, "reduce_bucket_size", round(bucket));
        cJSON_AddBoolToObject(z, "reduce_scatter", 1);
        if (rd->shard < SHARD_ZERO3) {
            cJSON_AddBoolToObject(z, "allgather_partitions", 1);
            cJSON_AddNumberToObject(z, "allgather_bucket_size", round(bucket));
        } else {
            cJSON_AddNumberToObject(z, "stage3_prefetch_bucket_size", round(bucket));
        }
    }
    if (rd->recompute_all) {
        cJSON *ac = cJSON_AddObjectToObject(j, "activation_checkpointing");
        cJSON_AddBoolToObject(ac, "partition_activations", rd->T > 1);
        cJSON_AddBoolToObject(ac, "contiguous_memory_optimization", 0);
        cJSON_AddBoolToObject(ac, "cpu_checkpointing", 0);
        if (rd->layers || lp->g->nblocks)
            cJSON_AddNumberToObject(ac, "number_checkpoints",
                                    rd->layers ? rd->layers : lp->g->nblocks);
        if (rd->P > 1)
            cJSON_AddNumberToObject(cJSON_AddObjectToObject(j, "pipeline"),
                                    "activation_checkpoint_interval", 1);
    }
    if (lp->s->optimizer == OPT_SGD)
        cJSON_AddStringToObject(cJSON_AddObjectToObject(j, "optimizer"), "type", "SGD");
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    size_t n = strlen(s);
    char *text = xmalloc(n + 2);
    memcpy(text, s, n);
    text[n] = '\n';
    text[n + 1] = 0;
    cJSON_free(s);
    return text;
}

static char *torchtitan_toml(const Reading *rd, const LoadedPlan *lp, char ***un, int *nun,
                             char ***notes, int *nn)
{
    common_gaps(rd, un, nun);
    if (rd->compress != COMPRESS_NONE)
        add_line(un, nun, "gradient compression %s (torchtitan reduces in float32)",
                 compress_name(rd->compress));
    if (rd->shard == SHARD_ZERO1)
        add_line(un, nun, "ZeRO-1 (torchtitan shards with FSDP2: gradients and parameters too)");
    if (rd->P * rd->V > 1 && lp->g->nblocks % (rd->P * rd->V))
        add_line(un, nun, "%d layers over %d pipeline chunks (not a whole number each)",
                 lp->g->nblocks, rd->P * rd->V);
    else if (!rd->even_cuts)
        add_line(un, nun, "pipeline cuts other than an even split of the layers");
    if (rd->E > 1) add_line(notes, nn, "expert parallelism %d as expert_parallel_degree", rd->E);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, "# torchtitan job config for plan %s: %s on %d x %s\n", lp->row.id,
            lp->row.model_name, lp->row.world, lp->row.cluster_name);
    fprintf(f, "# (keys as in torchtitan v0.2.2, torchtitan/config/job_config.py)\n\n");
    fprintf(f, "[training]\nlocal_batch_size = %lld\nglobal_batch_size = %lld\n",
            (long long)(rd->D ? rd->B / rd->D : rd->B), (long long)rd->B);
    if (rd->seq) fprintf(f, "seq_len = %lld\n", (long long)rd->seq);
    fprintf(f, "mixed_precision_param = \"%s\"\nmixed_precision_reduce = \"float32\"\n\n",
            rd->dtype == DT_F32 ? "float32" : "bfloat16");
    bool sharded = rd->shard == SHARD_ZERO2 || rd->shard == SHARD_ZERO3;
    fprintf(f, "[parallelism]\ndata_parallel_replicate_degree = %d\n"
               "data_parallel_shard_degree = %d\n", sharded ? 1 : rd->D, sharded ? rd->D : 1);
    if (rd->shard == SHARD_ZERO2) fprintf(f, "fsdp_reshard_after_forward = \"never\"\n");
    fprintf(f, "tensor_parallel_degree = %d\n", rd->T);
    if (rd->T > 1 && rd->sequence_parallel) fprintf(f, "disable_loss_parallel = false\n");
    fprintf(f, "pipeline_parallel_degree = %d\n", rd->P);
    if (rd->P > 1) {
        const char *sch = lp->s->schedule == SCHED_GPIPE ? "GPipe"
                        : lp->s->schedule == SCHED_INTERLEAVED ? "Interleaved1F1B" : "1F1B";
        fprintf(f, "pipeline_parallel_schedule = \"%s\"\n", sch);
        fprintf(f, "pipeline_parallel_microbatch_size = %lld\n", (long long)rd->mb);
        if (lp->g->nblocks % (rd->P * rd->V) == 0)
            fprintf(f, "pipeline_parallel_layers_per_stage = %d\n",
                    lp->g->nblocks / (rd->P * rd->V));
    }
    if (rd->E > 1) fprintf(f, "expert_parallel_degree = %d\n", rd->E);
    if (rd->Q > 1) fprintf(f, "context_parallel_degree = %d\n", rd->Q);
    fprintf(f, "\n[activation_checkpoint]\nmode = \"%s\"\n", rd->recompute_all ? "full" : "none");
    fclose(f);
    return text;
}

/* ----------------------------------------------------------------------------
 * The job */

/* Candidates the framework can express: the Megatron-LM layout on the same
 * mesh and with tensor parallelism folded into data parallelism (megatron,
 * torchtitan), ZeRO-1/2/3 and data parallel over every device (all three;
 * torchtitan takes no ZeRO-1), each with the plan's micro-batches and
 * recompute, then with more micro-batches and recompute (so that one fits
 * where the plan's activations would not). Those that build go to out. */
#define MAX_CANDIDATES 80
static int candidates(const LoadedPlan *lp, const Reading *rd, ExportTarget to, Strategy **out,
                      Err *why)
{
    const Graph *g = lp->g;
    int n = 0;
    Err e = {0};
    int micro[3] = { rd->M, rd->M * 4, rd->M * 16 };
    for (int mi = 0; mi < 3; mi++)
        for (int rc = 0; rc < 2; rc++) {
            if (rc && rd->recompute_any) continue;
            Reading r = *rd;
            r.M = micro[mi];
            r.recompute_any = rd->recompute_any || rc;
            if (to != EXPORT_DEEPSPEED) {
                if (to == EXPORT_TORCHTITAN && rd->P * rd->V > 1 && g->nblocks % (rd->P * rd->V))
                    r.V = 1;
                /* sharded as the framework shards: the distributed optimizer, or FSDP */
                int zero = to == EXPORT_MEGATRON ? 1 : 3;
                for (int z = 0; z <= zero; z += zero) {
                    if ((out[n] = megatron_like(g, lp->c, &r, false, z, &e))) n++;
                    if (r.T > 1) {
                        Reading f = r;
                        f.D = r.D * r.T;
                        f.T = 1;
                        if ((out[n] = megatron_like(g, lp->c, &f, false, z, &e))) n++;
                    }
                }
            }
            for (int z = 0; z <= 3; z++) {
                if (to == EXPORT_TORCHTITAN && z == 1) continue;
                StrategyOpts o = { .world = lp->s->world, .zero = z,
                                   .recompute = r.recompute_any, .microbatches = r.M };
                cJSON *j = strategy_build(z ? "zero" : "dp", g, lp->c, &o, &e);
                if (j && (out[n] = strategy_from_json(j, g, lp->c, &e))) n++;
                cJSON_Delete(j);
            }
        }
    /* none could be made: the last reason why */
    if (!n) *why = e;
    return n;
}

int job_export(const char *db_path, const char *plan_id, ExportTarget to, Export *x, Err *err)
{
    memset(x, 0, sizeof *x);
    Db *db = db_open_existing(db_path, err);
    if (!db) return -1;
    LoadedPlan lp;
    int rc = job_load_plan(db, plan_id, &lp, err);
    db_close(db);
    if (rc) return rc;
    memcpy(x->plan_id, lp.row.id, 17);
    x->target = to;
    Reading rd;
    read_plan(lp.g, lp.c, lp.s, &rd, &x->unmapped, &x->nunmapped);
    char *text = to == EXPORT_MEGATRON ? megatron_args(&rd, &lp, &x->unmapped, &x->nunmapped,
                                                       &x->notes, &x->nnotes)
               : to == EXPORT_DEEPSPEED ? deepspeed_config(&rd, &lp, &x->unmapped, &x->nunmapped,
                                                           &x->notes, &x->nnotes)
               : torchtitan_toml(&rd, &lp, &x->unmapped, &x->nunmapped, &x->notes, &x->nnotes);
    x->format = to == EXPORT_MEGATRON ? "args" : to == EXPORT_DEEPSPEED ? "json" : "toml";
    if (!x->nunmapped) {
        x->text = text;
        loaded_plan_free(&lp);
        return 0;
    }
    free(text);
    /* refused: the fastest plan it can express that fits, predicted beside
     * this one (analytical model) and stored */
    Err e = {0};
    Estimate a;
    x->step_s = INFINITY;
    x->closest_step_s = INFINITY;
    if (job_estimate(lp.g, lp.c, lp.s, &(EstimateOpts){ 0 }, &a, &e) == 0) {
        if (a.sim.feasible) x->step_s = a.sim.step_time;
        estimate_free(&a);
    }
    Strategy *cand[MAX_CANDIDATES] = { 0 }, *cs = NULL;
    Err none = {0};
    int nc = candidates(&lp, &rd, to, cand, &none);
    for (int k = 0; k < nc; k++) {
        if (!cand[k] || job_estimate(lp.g, lp.c, cand[k], &(EstimateOpts){ 0 }, &a, &e)) continue;
        if (a.sim.feasible && a.sim.step_time < x->closest_step_s) {
            x->closest_step_s = a.sim.step_time;
            cs = cand[k];
        }
        estimate_free(&a);
    }
    if (cs && job_estimate(lp.g, lp.c, cs, &(EstimateOpts){ .db_path = db_path }, &a, &e) == 0) {
        memcpy(x->closest_plan_id, a.plan_id, 17);
        estimate_free(&a);
    }
    if (!x->closest_plan_id[0] && !nc)
        snprintf(x->closest_why, sizeof x->closest_why, "no plan of the framework's forms could "
                 "be made here: %.300s", none.msg);
    else if (!x->closest_plan_id[0])
        snprintf(x->closest_why, sizeof x->closest_why, "%.400s",
                 e.msg[0] ? e.msg : "none of the candidates fits the devices' memory");
    for (int k = 0; k < nc; k++) strategy_free(cand[k]);
    loaded_plan_free(&lp);
    return 0;
}

cJSON *export_json(const Export *x)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "plan_id", x->plan_id);
    cJSON_AddStringToObject(j, "to", export_target_name(x->target));
    cJSON_AddStringToObject(j, "format", x->format);
    cJSON_AddBoolToObject(j, "exported", x->text != NULL);
    if (x->text) cJSON_AddStringToObject(j, "text", x->text);
    cJSON *un = cJSON_AddArrayToObject(j, "unmapped"), *no = cJSON_AddArrayToObject(j, "notes");
    for (int i = 0; i < x->nunmapped; i++) cJSON_AddItemToArray(un, cJSON_CreateString(x->unmapped[i]));
    for (int i = 0; i < x->nnotes; i++) cJSON_AddItemToArray(no, cJSON_CreateString(x->notes[i]));
    if (!x->text) {
        cJSON *c = cJSON_AddObjectToObject(j, "closest");
        if (x->closest_plan_id[0]) {
            cJSON_AddStringToObject(c, "plan_id", x->closest_plan_id);
            if (isfinite(x->closest_step_s)) cJSON_AddNumberToObject(c, "step_time_s", x->closest_step_s);
            else cJSON_AddNullToObject(c, "step_time_s");
            if (isfinite(x->step_s)) cJSON_AddNumberToObject(c, "original_step_time_s", x->step_s);
            else cJSON_AddNullToObject(c, "original_step_time_s");
        } else {
            cJSON_AddStringToObject(c, "why_none", x->closest_why);
        }
    }
    return j;
}

void export_free(Export *x)
{
    for (int i = 0; i < x->nunmapped; i++) free(x->unmapped[i]);
    for (int i = 0; i < x->nnotes; i++) free(x->notes[i]);
    free(x->unmapped);
    free(x->notes);
    free(x->text);
    memset(x, 0, sizeof *x);
}
