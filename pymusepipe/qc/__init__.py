"""Quality control: figures of the products of a pointing (:mod:`.figures`) and the HTML report that links
them with the products' QC keywords and the step tables (:mod:`.report`).

``pymusepipe report`` (:mod:`.command`) builds the report of a reduced pointing from the files on disk.
"""
