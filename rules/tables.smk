rule tables:
    input:
        unpack(get_table_inputs),
    output:
        tables=TABLES,
    conda:
        "../envs/nnpipe.yaml"
    log:
        "logs/tables.log",
    script:
        "../workflow/scripts/tables.py"
