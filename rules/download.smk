rule download:
    output:
        dataset=f"{DS}/raw/dataset.json",
    params:
        raw=subpath(output.dataset, parent=True),
        settings=section_json("dataset"),
    conda:
        "../envs/nnpipe.yaml"
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    shell:
        "nnpipe download --config-json {params.settings:q} --out {params.raw} > {log} 2>&1"
