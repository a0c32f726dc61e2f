# A checkpoint: the fingerprint says which dims the dataset can have (a 2D dataset, every
# case a single slice, has no 3D runs) and whether it needs the low-resolution cascade, and
# rules/common.smk's input functions read it.
checkpoint fingerprint:
    input:
        dataset=rules.download.output.dataset,
    output:
        fingerprint=FILE("fingerprint"),
    params:
        raw=subpath(input.dataset, parent=True),
    threads: 2
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/plans/fingerprint.log",
    benchmark:
        f"{LOGS}/plans/fingerprint.tsv"
    shell:
        "nnpipe fingerprint --raw {params.raw} --workers {threads} --out {output.fingerprint}"
        " > {log} 2>&1"


rule plan:
    input:
        fingerprint=rules.fingerprint.output.fingerprint,
    output:
        plan=FILE("plan"),
    params:
        settings=section_json("dataset", "planning"),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/plans/{{config}}.log",
    shell:
        "nnpipe plan --config-json {params.settings:q} --fingerprint {input.fingerprint}"
        " --configuration {wildcards.config} --out {output.plan} > {log} 2>&1"


rule split:
    input:
        dataset=rules.download.output.dataset,
    output:
        splits=FILE("splits"),
    params:
        raw=subpath(input.dataset, parent=True),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/splits.log",
    shell:
        "nnpipe split --raw {params.raw} --out {output.splits} > {log} 2>&1"
