import com.amazonaws.ml.mms.util.messages.RequestInput;
import com.amazonaws.ml.mms.util.messages.WorkerCommands;
import com.amazonaws.ml.mms.wlm.Job;
import com.amazonaws.ml.mms.wlm.Model;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Runs whichever com.amazonaws.ml.mms.wlm.Model is first on the class path through pollBatch with batch size
 * 16 and a max batch delay of args[0] ms. Prints one line per case: "<case> size=<jobs in the batch>
 * ms=<milliseconds pollBatch took> hints=<alone headers left on the batch's jobs>". Used by
 * tests/unit/test_mms_batching.py.
 */
public final class PollBatchCheck {

    private static final String HINT = "X-Torch-Mme-Alone";
    private static int ids;

    public static void main(String[] args) throws Exception {
        int delay = Integer.parseInt(args[0]);
        run("lone_marked", delay, job(HINT));
        run("lone_marked_lowercase", delay, job(HINT.toLowerCase()));
        run("lone_unmarked", delay, job(null));
        run("marked_with_one_queued", delay, job(HINT), job(null));
        run("unmarked_then_marked", delay, job(null), job(HINT));
    }

    private static Job job(String hint) {
        RequestInput input = new RequestInput(String.format("%036d", ++ids));
        input.updateHeaders("Content-Type", "application/json");
        if (hint != null) {
            input.updateHeaders(hint, "1");
        }
        return new Job(null, "m", WorkerCommands.PREDICT, input);
    }

    private static void run(String name, int delay, Job... queued) throws InterruptedException {
        Model model = new Model(null, 100, null);
        model.setBatchSize(16);
        model.setMaxBatchDelay(delay);
        for (Job job : queued) {
            model.addJob(job);
        }
        Map<String, Job> batch = new LinkedHashMap<>();
        long start = System.nanoTime();
        model.pollBatch("worker-1", Long.MAX_VALUE, batch);
        long ms = (System.nanoTime() - start) / 1_000_000;
        long hints = 0;
        for (Job job : batch.values()) {
            hints += job.getPayload().getHeaders().keySet().stream().filter(HINT::equalsIgnoreCase).count();
        }
        System.out.println(name + " size=" + batch.size() + " ms=" + ms + " hints=" + hints);
    }
}
