-- a results database written by vlbench 0.1.0 (commit e3c7e40, before schema versions): the base revision
BEGIN TRANSACTION;
CREATE TABLE metrics (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	split VARCHAR(10) NOT NULL, 
	epoch INTEGER NOT NULL, 
	task VARCHAR(50) NOT NULL, 
	name VARCHAR(50) NOT NULL, 
	value DOUBLE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, split, epoch, task, name), 
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
INSERT INTO "metrics" VALUES(1,1,'val',0,'vqa','score',40.0);
INSERT INTO "metrics" VALUES(2,1,'val',0,'caption','CIDEr',300.0);
INSERT INTO "metrics" VALUES(3,1,'val',1,'vqa','score',41.0);
INSERT INTO "metrics" VALUES(4,1,'val',1,'caption','CIDEr',301.0);
INSERT INTO "metrics" VALUES(5,1,'test',1,'vqa','score',41.5);
INSERT INTO "metrics" VALUES(6,1,'test',1,'caption','CIDEr',310.25);
INSERT INTO "metrics" VALUES(7,2,'val',0,'vqa','score',41.0);
INSERT INTO "metrics" VALUES(8,2,'val',0,'caption','CIDEr',300.0);
INSERT INTO "metrics" VALUES(9,2,'val',1,'vqa','score',42.0);
INSERT INTO "metrics" VALUES(10,2,'val',1,'caption','CIDEr',301.0);
INSERT INTO "metrics" VALUES(11,2,'test',1,'vqa','score',42.5);
INSERT INTO "metrics" VALUES(12,2,'test',1,'caption','CIDEr',310.25);
CREATE TABLE param_counts (
	run_id INTEGER NOT NULL, 
	trainable INTEGER NOT NULL, 
	total INTEGER NOT NULL, 
	percent DOUBLE NOT NULL, 
	convention TEXT NOT NULL, 
	components_json TEXT NOT NULL, 
	PRIMARY KEY (run_id), 
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
INSERT INTO "param_counts" VALUES(1,1000,100000,1.0,'LM + visual embedding','{"lm": {"total": 90000, "trainable": 1000}}');
INSERT INTO "param_counts" VALUES(2,2000,100000,2.0,'LM + visual embedding','{"lm": {"total": 90000, "trainable": 1000}}');
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	"key" VARCHAR(64) NOT NULL, 
	sweep_id INTEGER NOT NULL, 
	method VARCHAR(50) NOT NULL, 
	sharing VARCHAR(20), 
	hidden_dim INTEGER, 
	seed INTEGER NOT NULL, 
	profile VARCHAR(50) NOT NULL, 
	suite VARCHAR(50) NOT NULL, 
	label VARCHAR(200) NOT NULL, 
	config_json TEXT NOT NULL, 
	status VARCHAR(10) NOT NULL, 
	error TEXT, 
	started_at DATETIME, 
	finished_at DATETIME, 
	host VARCHAR(200), 
	device VARCHAR(200), 
	git_commit VARCHAR(64), 
	versions_json TEXT, 
	owner VARCHAR(300), 
	train_seconds DOUBLE, 
	eval_seconds DOUBLE, 
	samples_per_second DOUBLE, 
	peak_memory_mb DOUBLE, 
	checkpoint_bytes INTEGER, 
	PRIMARY KEY (id), 
	UNIQUE ("key"), 
	FOREIGN KEY(sweep_id) REFERENCES sweeps (id)
);
INSERT INTO "runs" VALUES(1,'bf88b499c3073e62',1,'full',NULL,NULL,0,'tiny','image-text','full-s0','{"backbone": "tiny", "data": {"features": null, "image_size": 128, "n_test": 300, "n_train": 1200, "n_val": 150, "root": null, "seed": 0, "source": "synthetic"}, "hidden_dim": null, "method": "full", "method_options": {}, "optim": {"adam_eps": 1e-06, "batch_size": 32, "caption_beams": 5, "caption_max_len": 20, "epochs": 8, "eval_batch_size": 128, "grad_clip": 5.0, "lr": 0.001, "task_batch_sizes": [], "warmup_ratio": 0.1, "weight_decay": 0.01}, "pool_size": 4, "profile": "tiny", "seed": 0, "sharing": null, "suite": "image-text", "tasks": ["vqa", "gqa", "nlvr", "caption"]}','done',NULL,'2026-12-01 10:05:06.920466','2026-12-01 10:05:06.931796','oldhost','cpu (2 threads)','e3c7e40','{"torch": "2.13.0", "vlbench": "0.1.0"}','vm:6613:d0a5966aa79a4487a2195a0402ba8584',12.5,3.0,200.0,800.0,4096);
INSERT INTO "runs" VALUES(2,'2f015b3d936f7ca1',1,'adapter','single',8,0,'tiny','image-text','adapter-single-d8-s0','{"backbone": "tiny", "data": {"features": null, "image_size": 128, "n_test": 300, "n_train": 1200, "n_val": 150, "root": null, "seed": 0, "source": "synthetic"}, "hidden_dim": 8, "method": "adapter", "method_options": {}, "optim": {"adam_eps": 1e-06, "batch_size": 32, "caption_beams": 5, "caption_max_len": 20, "epochs": 8, "eval_batch_size": 128, "grad_clip": 5.0, "lr": 0.001, "task_batch_sizes": [], "warmup_ratio": 0.1, "weight_decay": 0.01}, "pool_size": 4, "profile": "tiny", "seed": 0, "sharing": "single", "suite": "image-text", "tasks": ["vqa", "gqa", "nlvr", "caption"]}','done',NULL,'2026-12-01 10:05:06.934075','2026-12-01 10:05:06.942073','oldhost','cpu (2 threads)','e3c7e40','{"torch": "2.13.0", "vlbench": "0.1.0"}','vm:6613:22663bcbd9a8445eacc24075149ce781',12.5,3.0,200.0,800.0,4096);
INSERT INTO "runs" VALUES(3,'aad54f51e41b1849',1,'lora','multiple',8,0,'tiny','image-text','lora-multiple-d8-s0','{"backbone": "tiny", "data": {"features": null, "image_size": 128, "n_test": 300, "n_train": 1200, "n_val": 150, "root": null, "seed": 0, "source": "synthetic"}, "hidden_dim": 8, "method": "lora", "method_options": {}, "optim": {"adam_eps": 1e-06, "batch_size": 32, "caption_beams": 5, "caption_max_len": 20, "epochs": 8, "eval_batch_size": 128, "grad_clip": 5.0, "lr": 0.001, "task_batch_sizes": [], "warmup_ratio": 0.1, "weight_decay": 0.01}, "pool_size": 4, "profile": "tiny", "seed": 0, "sharing": "multiple", "suite": "image-text", "tasks": ["vqa", "gqa", "nlvr", "caption"]}','failed','TrainingError: loss is nan at epoch 0 step 3 (task vqa)','2026-12-01 10:05:06.943789','2026-12-01 10:05:06.945388','oldhost','cpu (2 threads)','e3c7e40','{"torch": "2.13.0", "vlbench": "0.1.0"}','vm:6613:cd3c277f701e426aba078b095c0857b2',NULL,NULL,NULL,NULL,NULL);
CREATE TABLE sweeps (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	suite VARCHAR(50) NOT NULL, 
	profile VARCHAR(50) NOT NULL, 
	created_at DATETIME NOT NULL, 
	command TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
INSERT INTO "sweeps" VALUES(1,'image-text-tiny','image-text','tiny','2026-12-01 10:05:06.916246','vlbench sweep image-text');
CREATE INDEX ix_runs_status ON runs (status);
CREATE INDEX ix_runs_sweep_id ON runs (sweep_id);
COMMIT;
