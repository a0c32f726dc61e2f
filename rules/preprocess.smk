from nnpipe.planning.plan import PREPROCESSING_VERSION


rule preprocess:
    input:
        dataset=rules.download.output.dataset,
        plan=rules.plan.output.plan,
    output:
        manifest=FILE("manifest"),
    params:
        raw=subpath(input.dataset, parent=True),
        out=subpath(output.manifest, parent=True),
        settings=section_json("preprocess"),
        # a new version of the preprocessing rules rebuilds the folder (params trigger)
        rules_version=PREPROCESSING_VERSION,
    threads: 2
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/preprocessed/{{config}}.log",
    benchmark:
        f"{LOGS}/preprocessed/{{config}}.tsv"
    shell:
        "nnpipe preprocess --config-json {params.settings:q} --raw {params.raw}"
        " --plan {input.plan} --workers {threads}"
        " --out {params.out} > {log} 2>&1"
