"""Data: reading photographs, fundus preprocessing, dataset adapters, ingest, splits, the synthetic set.

    images      one reader for every stage (stable failure reasons)
    preprocess  field-of-view fit, crop, resize, Ben Graham; masks warped alike
    sources/    one adapter per on-disk layout (APTOS, EyePACS, Messidor-2, IDRiD, DDR, CSV, folder, synth)
    ingest      adapters -> manifest.parquet + ingest_errors.parquet
    splits      patient-level stratified train/val/test
    dataset     manifest -> Ray Dataset of preprocessed images (and lesion masks)
    synth/      procedural fundus photographs with lesion masks

Nothing here imports training, explanation or serving code.
"""
