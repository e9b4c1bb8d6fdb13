/*
 * suite_default.c — the plans `strata validate` runs when given no suite.
 *
 * Small enough that the whole suite runs in a few minutes on a 2-core
 * machine, large enough that a step is tens to hundreds of milliseconds
 * (timer noise and MPI start-up stay small beside it). Every family of
 * strategy appears on 1 and 2 ranks: data parallel, Megatron tensor
 * parallel, GPipe, 1F1B and interleaved pipelines, ZeRO-1 and ZeRO-3, a parameter
 * server, fp16 and int8 compression, recompute, expert parallelism.
 *
 * A plan is {"name", "model": {"kind", options...} or {"file"},
 * "strategy": {"build": KIND, options...} or {"json": {...}}}; the options
 * are those of `strata model build` and `strata strategy build`.
 */
#include "jobs.h"

const char *const SUITE_DEFAULT =
    "{\"name\":\"default\",\"plans\":["
    /* an MLP: four 1024-wide layers */
    "{\"name\":\"mlp-1\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
    "{\"name\":\"mlp-recompute-1\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":1,\"recompute\":true}},"
    "{\"name\":\"mlp-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":2}},"
    "{\"name\":\"mlp-tp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"json\":{\"mesh\":{\"tp\":2},\"ops\":{\"*\":{\"split\":{\"h\":\"tp\"}}}}}},"
    "{\"name\":\"mlp-gpipe2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"gpipe\",\"world\":2,\"pp\":2,\"microbatches\":4}},"
    "{\"name\":\"mlp-1f1b2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"megatron\",\"world\":2,\"tp\":1,\"pp\":2,\"microbatches\":4}},"
    "{\"name\":\"mlp-interleaved2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"megatron\",\"world\":2,\"tp\":1,\"pp\":2,\"virtual\":2,\"microbatches\":4}},"
    "{\"name\":\"mlp-zero1-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"zero\",\"world\":2,\"zero\":1}},"
    "{\"name\":\"mlp-zero3-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"zero\",\"world\":2,\"zero\":3}},"
    "{\"name\":\"mlp-ps-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"ps\",\"world\":2,\"ps_shards\":2}},"
    "{\"name\":\"mlp-fp16-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":2,\"compress\":\"fp16\"}},"
    "{\"name\":\"mlp-int8-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":\"4\",\"hidden\":\"1024\",\"input\":\"1024\",\"batch\":\"128\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":2,\"compress\":\"int8\"}},"
    /* a small GPT: 2 layers, h 256, s 128, vocabulary 4096 */
    "{\"name\":\"gpt-1\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
    "{\"name\":\"gpt-recompute-1\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":1,\"recompute\":true}},"
    "{\"name\":\"gpt-dp2\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":2}},"
    "{\"name\":\"gpt-tp2\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"megatron\",\"world\":2,\"tp\":2}},"
    "{\"name\":\"gpt-1f1b2\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"megatron\",\"world\":2,\"tp\":1,\"pp\":2,\"microbatches\":4}},"
    "{\"name\":\"gpt-gpipe2\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"gpipe\",\"world\":2,\"pp\":2,\"microbatches\":4}},"
    "{\"name\":\"gpt-zero3-dp2\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"zero\",\"world\":2,\"zero\":3}},"
    "{\"name\":\"gpt-recompute-tp2\",\"model\":{\"kind\":\"gpt\",\"layers\":\"2\",\"hidden\":\"256\",\"heads\":\"4\",\"seq\":\"128\",\"vocab\":\"4096\",\"batch\":\"8\"},"
    " \"strategy\":{\"build\":\"megatron\",\"world\":2,\"tp\":2,\"recompute\":true}},"
    /* a VGG-style CNN: widths 16..128, 32x32 images */
    "{\"name\":\"cnn-1\",\"model\":{\"kind\":\"vgg16\",\"width\":\"16\",\"image\":\"32\",\"fc\":\"256\",\"classes\":\"10\",\"batch\":\"16\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
    "{\"name\":\"cnn-dp2\",\"model\":{\"kind\":\"vgg16\",\"width\":\"16\",\"image\":\"32\",\"fc\":\"256\",\"classes\":\"10\",\"batch\":\"16\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":2}},"
    "{\"name\":\"cnn-zero1-dp2\",\"model\":{\"kind\":\"vgg16\",\"width\":\"16\",\"image\":\"32\",\"fc\":\"256\",\"classes\":\"10\",\"batch\":\"16\"},"
    " \"strategy\":{\"build\":\"zero\",\"world\":2,\"zero\":1}},"
    /* a switch MoE: 2 layers, 2 experts */
    "{\"name\":\"moe-1\",\"model\":{\"kind\":\"moe\",\"layers\":\"2\",\"hidden\":\"128\",\"heads\":\"4\",\"seq\":\"64\",\"vocab\":\"1024\",\"batch\":\"8\",\"experts\":\"2\",\"every\":\"1\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
    "{\"name\":\"moe-dp2\",\"model\":{\"kind\":\"moe\",\"layers\":\"2\",\"hidden\":\"128\",\"heads\":\"4\",\"seq\":\"64\",\"vocab\":\"1024\",\"batch\":\"8\",\"experts\":\"2\",\"every\":\"1\"},"
    " \"strategy\":{\"build\":\"dp\",\"world\":2}},"
    "{\"name\":\"moe-ep2\",\"model\":{\"kind\":\"moe\",\"layers\":\"2\",\"hidden\":\"128\",\"heads\":\"4\",\"seq\":\"64\",\"vocab\":\"1024\",\"batch\":\"8\",\"experts\":\"2\",\"every\":\"1\"},"
    " \"strategy\":{\"build\":\"megatron\",\"world\":2,\"tp\":2}}"
    "]}";
