# The low-resolution cascade (planning.cascade, nnpipe.planning.cascade): the 3d_cascade run
# trains on the 3d_lowres segmentations of its training cases. Each comes from the 3d_lowres
# cross-validation (the fold model that did not train on the case), put on the 3D
# preprocessed grid once per (precision, gpus) for every fold of the cascade.


rule previous:
    input:
        manifest=PATHS.path("manifest", config="3d"),
        predictions=get_lowres_predictions,
    output:
        previous=directory(PATHS.path("previous", config="3d_cascade", precision="{precision}",
                                      gpus="{gpus}")),
    params:
        preprocessed=subpath(input.manifest, parent=True),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/previous/3d_cascade-{{precision}}-{{gpus}}gpu.log",
    shell:
        "nnpipe previous --preprocessed {params.preprocessed} --pred {input.predictions}"
        " --out {output.previous} > {log} 2>&1"
