-- depends: 0005_result_cache
-- Keep vectors inline: a 768-dimension float32 vector (3 KiB) is over the default 2 KiB
-- TOAST threshold, so each one was compressed (random floats do not compress) and moved to
-- the TOAST table, costing CPU and a second lookup on every write and read.

ALTER TABLE embedq_item SET (toast_tuple_target = 8160);
ALTER TABLE embedq_cache SET (toast_tuple_target = 8160);
