rule download:
    output:
        dataset=FILE("dataset_json"),
    params:
        raw=subpath(output.dataset, parent=True),
        settings=section_json("dataset"),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/download.log",
    benchmark:
        f"{LOGS}/download.tsv"
    shell:
        "nnpipe download --config-json {params.settings:q} --out {params.raw} > {log} 2>&1"
