"""`drray audit`: what a model's maps look at across a whole archive, without lesion masks.

    strategies    clusters of map grids per predicted class, in the fundus and camera frames; the suspect rule
    run           audit(run_dir): fit on a sample, assign every row on Ray Data, strategies.parquet, strategy_of.parquet
    intervention  suspect strategies' photographs predicted again with their place removed, and a control

    from drray.audit.run import audit
    result = audit("runs/demo")          # after drray explain
"""
