# Throughput cells like the reference's tables: warm-up steps, then timed steps. A benchmark
# claims every core Snakemake has (local runs scale threads down to --cores), so no other job
# shares the machine while it is timed. The training section goes along: a train cell times
# the trainer's own step (its optimizer, schedule, loss and loader).

# BENCH_NAME: {mode}-{dim}d-{precision}-bs{bs}-{gpus}gpu (nnpipe.study, via common.smk)


rule benchmark:
    input:
        plan=PATHS.path("plan", config="{dim}d"),
        manifest=PATHS.path("manifest", config="{dim}d"),
    output:
        record=FILE("benchmark"),
    params:
        preprocessed=subpath(input.manifest, parent=True),
        launch=get_launcher,
        settings=section_json("benchmark", "training"),
    threads: get_all_cores
    resources:
        gpu=get_gpus,
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/benchmark/{BENCH_NAME}.log",
    shell:
        "{params.launch} benchmark --config-json {params.settings:q} --mode {wildcards.mode}"
        " --dim {wildcards.dim} --batch-size {wildcards.bs} --precision {wildcards.precision}"
        " --plan {input.plan} --preprocessed {params.preprocessed} --threads {threads}"
        " --out {output.record} > {log} 2>&1"
